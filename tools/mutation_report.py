"""The report of tools/mutation.py: writes ``benchmarks/results/mutation.md``.

Per file: mutants generated, killed, timed out, incompetent, survived, pending and the score (a
file whose session is not in this checkout keeps the row and survivors it had in the report, marked
"earlier run"); then every mutant that survived a run, with the test that kills it now or the
reason it is equivalent (``tools/mutation_equivalents.toml``).
"""

from __future__ import annotations

import json
import re

from mutation_runner import ROOT, SESSIONS, digest, load_toml, mutant_key, slug

RESULTS = ROOT / "benchmarks" / "results" / "mutation.md"
EQUIVALENTS = ROOT / "tools" / "mutation_equivalents.toml"


def killing_test(output: str | None) -> str:
    found = re.search(r"^(?:FAILED|ERROR) (\S+)", output or "", re.M)
    return found[1] if found else "(collection or import error)"


def summarise(path: str) -> dict | None:
    from cosmic_ray.work_db import WorkDB
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    db_path, meta_path = SESSIONS / f"{slug(path)}.sqlite", SESSIONS / f"{slug(path)}.json"
    if not db_path.exists() or not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    db = WorkDB(str(db_path), WorkDB.Mode.open)
    results = {item.job_id: result for item, result in db.completed_work_items}
    counts = dict.fromkeys(["generated", "left out", "killed", "timed out", "incompetent", "survived", "pending"], 0)
    survivors, killed_by, keys, lines = [], {}, {}, {}
    for item in db.work_items:
        result = results.get(item.job_id)
        key = keys[item.job_id] = mutant_key(item.mutations[0], result and result.diff)
        if result is not None and result.worker_outcome == WorkerOutcome.SKIPPED:
            counts["left out"] += 1
            continue
        counts["generated"] += 1
        if result is None:
            counts["pending"] += 1
        elif result.test_outcome == TestOutcome.SURVIVED:
            counts["survived"] += 1
            survivors.append(key)
        elif result.test_outcome == TestOutcome.KILLED and (result.output or "").strip() == "timeout":
            counts["timed out"] += 1
        elif result.test_outcome == TestOutcome.KILLED:
            counts["killed"] += 1
            killed_by[key] = killing_test(result.output)
        else:
            counts["incompetent"] += 1
        if result is not None:
            lines[key] = item.mutations[0].start_pos[0]
    db.close()
    return {"counts": counts, "survivors": survivors, "killed_by": killed_by, "lines": lines,
            "ever": [keys.get(job, job) for job in meta["ever_survived"]],
            "source_current": meta["source"] == digest(ROOT / path)}


def earlier_results() -> dict[str, tuple[str, str]]:
    """The table row and survivors section of every file in the current report that has a result,
    for the files whose session is not in this checkout (sessions are not committed)."""
    if not RESULTS.exists():
        return {}
    text, found = RESULTS.read_text(), {}
    sections = {m[1]: m[0].rstrip() for m in re.finditer(r"^### `([^`]+)`\n.*?(?=^### |\Z)", text, re.M | re.S)}
    for m in re.finditer(r"^\| `([^`]+)`.*$", text, re.M):
        if "| not run |" not in m[0] and m[1] in sections:
            found[m[1]] = (m[0], sections[m[1]])
    return found


def write_report(config: dict) -> str:
    equivalents = load_toml(EQUIVALENTS) if EQUIVALENTS.exists() else {}
    table = ["| file | generated | killed | timed out | incompetent | survived | equivalent | pending | score |"
             " score without equivalents |", "|---|---|---|---|---|---|---|---|---|---|"]
    details = []
    earlier = earlier_results()
    for path, entry in config["files"].items():
        summary = summarise(path)
        if summary is None and path in earlier:  # run in another checkout: keep its row and survivors
            row, section = earlier[path]
            table.append(row if "(earlier run" in row else row.replace(f"| `{path}`", f"| `{path}` (earlier run)", 1))
            details += [section, ""]
            continue
        if summary is None:
            table.append(f"| `{path}` | not run | | | | | | | | |")
            continue
        c, known = summary["counts"], equivalents.get(path, {})
        equivalent = sum(1 for key in summary["survivors"] if key in known and not known[key].startswith("accepted"))
        dead = c["killed"] + c["timed out"]
        tested = dead + c["survived"]
        score = f"{100 * dead / tested:.1f}%" if tested else "-"
        adjusted = f"{100 * dead / (tested - equivalent):.1f}%" if tested - equivalent else "-"
        stale = "" if summary["source_current"] else " (source changed since: rerun)"
        table.append(f"| `{path}`{stale} | {c['generated']} | {c['killed']} | {c['timed out']} | {c['incompetent']} | "
                     f"{c['survived']} | {equivalent} | {c['pending']} | {score} | {adjusted} |")
        functions = f" (functions {', '.join(entry['functions'])})" if entry["functions"] else ""
        lines = [f"### `{path}`", "", f"Tests: `{' '.join(entry['tests'])}`; {c['left out']} mutants left out "
                 f"by operator{', function' if functions else ''} or annotation{functions}.", ""]
        rows = []
        for key in summary["ever"]:
            if key in summary["killed_by"]:
                rows.append(f"- line {summary['lines'][key]}, {key}: killed by `{summary['killed_by'][key]}`")
        for key in summary["survivors"]:
            verdict = ("**survives: not yet addressed**" if key not in known else
                       f"**survives**, {known[key]}" if known[key].startswith("accepted") else f"equivalent: {known[key]}")
            rows.append(f"- line {summary['lines'][key]}, {key}: {verdict}")
        lines += rows or ["No mutant survived."]
        details += [*lines, ""]
    text = "\n".join([
        "# Mutation testing",
        "",
        "`python tools/mutation.py [FILE ...]` (cosmic-ray 8.7, configuration in pyproject.toml "
        "`[tool.densreg.mutation]`). Killed: a test of the file's subset failed; timed out: the subset ran past "
        f"{config['timeout']} s (counted as killed in the score); incompetent: cosmic-ray could not run the mutant; "
        "score = (killed + timed out) / (killed + timed out + survived); equivalent mutants are listed in "
        "`tools/mutation_equivalents.toml` with their reason (a reason starting \"accepted\" marks a mutant that is "
        "not equivalent but left alive, and counts as a survivor). Operators left out (every file): "
        f"{', '.join(f'`{e}`' for e in config.get('exclude-operators', []))}; mutants inside annotations are left "
        "out too (never evaluated under `from __future__ import annotations`).",
        "",
        *table,
        "",
        "## Survivors",
        "",
        "Every mutant that survived a run: the test that kills it now, or why it is equivalent.",
        "",
        *details,
    ])
    RESULTS.write_text(text.rstrip() + "\n")
    return text
