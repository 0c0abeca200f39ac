"""Mutation testing of the core and the models with cosmic-ray (issue 17): a tool, not CI.

    python tools/mutation.py                         # every file listed in pyproject.toml
    python tools/mutation.py registry/orderings.py   # one file (or several)
    python tools/mutation.py --report                # rewrite the results table only, run nothing
    python tools/mutation.py --reset FILE            # forget FILE's results and start over

Configuration: ``[tool.densreg.mutation]`` in pyproject.toml (per file: the fast test subset
that exercises it, optionally the functions to mutate; the per-mutant timeout; the operators
left out). cosmic-ray (``pip install -e ".[mutation]"``) writes each mutant into the file in
place, runs the file's tests, and puts the file back; this script refuses a file with
uncommitted changes, restores it itself on any exit, and checks ``git diff`` afterwards.

Incremental: each file's session (cosmic-ray's sqlite work database) lives in
``tools/mutation_sessions/`` (not committed). A rerun does only pending mutants; if the
file's tests changed, the survivors are retested; if the file itself changed, the mutants killed
before on lines that did not change keep their verdict and the rest runs again (``--reset``
starts over). Speed: torch (and hypothesis, whose pytest plugin would import and assertion-rewrite
it at the end of every run) is imported once, by a fork server, whose heap is then frozen for the
garbage collector; each mutant's test run is a fork of it that imports densreg afresh (0.5-2 s
for a killed mutant instead of 5-10 on a loaded 2-core box).
The mutants run one at a time, niced (two shared cores); cosmic-ray's http distributor could
spread them over worker clones, which this machine cannot afford.

Left out before any test runs: the operators of ``exclude-operators``, mutants outside the
configured functions, and mutants inside annotations (never evaluated under ``from __future__
import annotations``).

Writes ``benchmarks/results/mutation.md``: per file, mutants generated, killed, timed out,
incompetent, survived, pending and the score (a file whose session is not in this checkout keeps
the row and survivors it had in the report, marked "earlier run"); then every mutant that survived a run, with the
test that kills it now or the reason it is equivalent (``tools/mutation_equivalents.toml``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SESSIONS = ROOT / "tools" / "mutation_sessions"
RESULTS = ROOT / "benchmarks" / "results" / "mutation.md"
EQUIVALENTS = ROOT / "tools" / "mutation_equivalents.toml"
SERVER_FAILED = "mutation fork server failed"
# (hypothesis is preloaded: rewriting warnings for it are expected)
PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider", "--no-header", "-W", "ignore::pytest.PytestAssertRewriteWarning"]
# Imported once by the fork server: what every test run needs and nothing of densreg.
# (torch.testing.assert_close imports sympy: 3 s per run otherwise; torch._dynamo and onnxscript
# likewise for the export tests.)
PRELOAD = ("torch", "numpy", "pytest", "onnx", "onnxruntime", "safetensors", "click", "pluggy", "sklearn",
           "sklearn.datasets", "PIL.Image", "tqdm", "sympy", "torch.testing", "torch._dynamo", "torch.export",
           "torch.onnx", "onnxscript", "scipy.stats", "hypothesis", "hypothesis.strategies")


# -- configuration ------------------------------------------------------------------------
def load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import toml as tomllib  # cosmic-ray depends on it
        return tomllib.loads(path.read_text())
    return tomllib.loads(path.read_text())


def load_config() -> dict:
    """``[tool.densreg.mutation]``: files -> {tests, functions}, timeout, exclude-operators."""
    config = load_toml(ROOT / "pyproject.toml")["tool"]["densreg"]["mutation"]
    files = {}
    for name, entry in config["files"].items():
        entry = {"tests": entry} if isinstance(entry, list) else dict(entry)
        entry.setdefault("functions", [])
        files[name] = entry
    return {**config, "files": files}


def slug(path: str) -> str:
    return path.replace("/", "__").removesuffix(".py")


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes() if p.is_file() else b"-")
    return h.hexdigest()[:16]


def test_files(tests: list[str]) -> list[Path]:
    return sorted({ROOT / t.split("::")[0] for t in tests if t.endswith(".py") or ".py::" in t})


# -- the fork server ---------------------------------------------------------------------
def serve(address: str) -> None:
    """Import the heavy libraries once, then fork one pytest run per request (JSON over a socket)."""
    sys.dont_write_bytecode = True  # a mutant must never leave a .pyc behind
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    import gc

    import pytest

    gc.collect()
    gc.freeze()  # the preloaded heap is never scanned again: pytest's gc.collect at exit takes ms, not 1 s
    assert not any(m == "densreg" or m.startswith("densreg.") for m in sys.modules), "densreg preloaded"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    server.listen(1)
    while True:
        conn, _ = server.accept()
        with conn:
            request = json.loads(conn.makefile().readline())
            if request.get("stop"):
                return
            out = tempfile.TemporaryFile()
            start = time.perf_counter()
            pid = os.fork()
            if pid == 0:  # the child: fresh densreg imports see the mutant
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                code = 3
                try:
                    code = int(pytest.main(request["args"]))
                finally:
                    sys.stdout.flush()
                    os._exit(code)
            timed_out = False
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.perf_counter() - start > request["timeout"]:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    timed_out, status = True, 0
                    break
                time.sleep(0.02)
            out.seek(0)
            output = out.read().decode(errors="replace")[-4000:]
            rc = 124 if timed_out else os.waitstatus_to_exitcode(status)
            conn.sendall(json.dumps({"rc": rc, "output": output, "timed_out": timed_out}).encode() + b"\n")


def client(address: str, timeout: float, args: list[str]) -> int:
    """The test command cosmic-ray runs: one pytest run in the fork server; its exit status."""
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(address)
        conn.sendall(json.dumps({"args": args, "timeout": timeout}).encode() + b"\n")
        reply = json.loads(conn.makefile().readline())
    except (OSError, ValueError) as exc:  # not a verdict on the mutant: run_file stops
        print(f"{SERVER_FAILED}: {exc}")
        return 2
    print("timeout" if reply["timed_out"] else reply["output"])
    return reply["rc"]


class ForkServer:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="densreg-mutation-")
        self.address = os.path.join(self.dir, "socket")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        self.process = subprocess.Popen([sys.executable, __file__, "--serve", self.address], cwd=ROOT, env=env,
                                        start_new_session=True)  # its own group: close() ends its test runs too
        while not os.path.exists(self.address):
            if self.process.poll() is not None:
                raise SystemExit("the fork server did not start")
            time.sleep(0.1)

    def command(self, tests: list[str], timeout: float) -> str:
        return shlex.join([sys.executable, __file__, "--client", self.address, str(timeout), *PYTEST_ARGS, *tests])

    def close(self) -> None:
        """End the server and any test run it has forked (they share its process group)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        Path(self.address).unlink(missing_ok=True)
        os.rmdir(self.dir)


# -- safety ------------------------------------------------------------------------------
def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


def check_clean(path: str) -> None:
    if git("ls-files", "--error-unmatch", path).returncode != 0:
        raise SystemExit(f"{path} is not a file tracked by git in {ROOT}")
    if git("diff", "--quiet", "HEAD", "--", path).returncode != 0:
        raise SystemExit(f"{path} has uncommitted changes; commit them first (mutants are written into it)")


def check_editable_install() -> None:
    """The tests must import this checkout's files, the ones being mutated."""
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; "
                            "print(u.find_spec('densreg.registry').origin)"], capture_output=True, text=True, cwd="/")
    origin = probe.stdout.strip()
    if not origin.startswith(str(ROOT) + os.sep):
        raise SystemExit(f"densreg.registry imports from {origin or '(nowhere)'}, not from {ROOT}: "
                         f"run with the python of an editable install of this checkout (pip install -e .)")


# -- sessions ----------------------------------------------------------------------------
def mutant_key(spec, diff: str | None) -> str:
    """A name that survives edits elsewhere in the file: the function and the line, before and after."""
    lines = (diff or "").splitlines()
    removed = " ".join(d[1:].strip() for d in lines if d.startswith("-") and not d.startswith("---"))
    added = " ".join(d[1:].strip() for d in lines if d.startswith("+") and not d.startswith("+++"))
    return f"{spec.definition_name or '<module>'}: `{removed}` → `{added}`"


def killing_test(output: str | None) -> str:
    found = re.search(r"^(?:FAILED|ERROR) (\S+)", output or "", re.M)
    return found[1] if found else "(collection or import error)"


def open_session(path: str, entry: dict, config: dict):
    """The file's work database, (re)initialised when the source changed; survivors requeued
    when its tests changed. Returns (db, meta)."""
    from cosmic_ray.commands.init import init
    from cosmic_ray.work_db import WorkDB, WorkResultStorage
    from cosmic_ray.work_item import WorkerOutcome, WorkResult, TestOutcome

    SESSIONS.mkdir(exist_ok=True)
    db_path, meta_path = SESSIONS / f"{slug(path)}.sqlite", SESSIONS / f"{slug(path)}.json"
    source, tests = digest(ROOT / path), digest(*test_files(entry["tests"]), ROOT / "pyproject.toml")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() and db_path.exists() else {}
    db = WorkDB(str(db_path), WorkDB.Mode.create)
    if meta.get("source") != source:
        before = {item.job_id: (mutant_key(item.mutations[0], result.diff), result)
                  for item, result in db.completed_work_items if result.diff} if meta else {}
        init([Path(path)], db, {})
        exclude = re.compile("|".join(f"(?:{e})" for e in config.get("exclude-operators", [])) or "(?!)")
        functions, annotations = set(entry["functions"]), annotation_spans(ROOT / path)
        left_out = {}
        for item in db.work_items:
            spec = item.mutations[0]
            why = ("operator left out" if exclude.search(spec.operator_name) else
                   "outside the functions under test" if functions and not _inside(spec, functions) else
                   "in an annotation" if any(a <= tuple(spec.start_pos) and tuple(spec.end_pos) <= b
                                             for a, b in annotations) else None)
            if why:
                left_out.setdefault(why, []).append(item.job_id)
        for why, jobs in left_out.items():  # one transaction each: a commit per mutant took minutes on a busy disk
            db.set_multiple_results(jobs, WorkResult(output=why, worker_outcome=WorkerOutcome.SKIPPED))
        meta = {"source": source, "tests": tests,
                "ever_survived": carry_over(db, path, before, meta.get("ever_survived", []))}
    elif meta.get("tests") != tests:
        survivors = [item.job_id for item, result in db.completed_work_items
                     if result.test_outcome == TestOutcome.SURVIVED]
        with db._session_maker.begin() as session:  # noqa: SLF001 - cosmic-ray has no "requeue"
            session.query(WorkResultStorage).filter(WorkResultStorage.job_id.in_(survivors)).delete()
        meta["tests"] = tests
        print(f"{path}: tests changed, retesting {len(survivors)} survivors", flush=True)
    meta_path.write_text(json.dumps(meta, indent=1))
    return db, meta, meta_path


def carry_over(db, path: str, before: dict, ever_survived: list[str]) -> list[str]:
    """After the file changed: keep the verdict of every mutant killed before whose line is unchanged
    (same function, same line before and after the mutation); the rest is pending again. Returns
    the new job ids of the mutants that ever survived. Only mutants on a line that a known mutant
    started from are mutated to compare (parsing the file once per mutant took minutes)."""
    import cosmic_ray.plugins
    from cosmic_ray.mutating import MutationVisitor, _make_diff
    from cosmic_ray.work_db import _work_result_to_storage
    from cosmic_ray.work_item import TestOutcome

    if not before:
        return []
    killed = {key: result for key, result in before.values() if result.test_outcome == TestOutcome.KILLED}
    survived_keys = {before[job][0] for job in ever_survived if job in before}
    known = killed.keys() | survived_keys
    code, kept, ever = (ROOT / path).read_text(), {}, []
    lines = code.splitlines()
    for item in db.pending_work_items:
        spec = item.mutations[0]
        start = f"{spec.definition_name or '<module>'}: `{lines[spec.start_pos[0] - 1].strip()}"
        if not any(key.startswith(start) for key in known):
            continue
        operator = cosmic_ray.plugins.get_operator(spec.operator_name)(**(spec.operator_args or {}))
        mutated = MutationVisitor.mutate_code(code, operator, spec.occurrence)
        if mutated is None:
            continue
        key = mutant_key(spec, "\n".join(_make_diff(code, mutated, spec.module_path)))
        if key in survived_keys:
            ever.append(item.job_id)
        if key in killed:
            kept[item.job_id] = killed[key]
    with db._session_maker.begin() as session:  # noqa: SLF001 - one transaction, not one per mutant
        for job_id, result in kept.items():
            session.merge(_work_result_to_storage(result, job_id))
    print(f"{path}: the file changed; {len(kept)} killed mutants on unchanged lines keep their verdict, "
          f"{len(db.pending_work_items)} to run", flush=True)
    return ever


def annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The (start, end) (line, column) spans of the annotations of ``path`` when it has
    ``from __future__ import annotations`` (never evaluated then: a mutant in one changes nothing)."""
    import ast

    tree = ast.parse(path.read_text())
    if not any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
               and any(alias.name == "annotations" for alias in node.names) for node in tree.body):
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            found += [a.annotation for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg)
                      if a is not None and a.annotation is not None]
            found += [node.returns] if node.returns is not None else []
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
    return [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in found]


def _inside(spec, functions: set[str]) -> bool:
    """Whether the mutant lies in one of ``functions`` (by the enclosing definition's name)."""
    return (spec.definition_name or "").split(".")[-1] in functions or spec.definition_name in functions


def run_file(path: str, entry: dict, config: dict, server: ForkServer, limit_minutes: float | None) -> None:
    from cosmic_ray.mutating import mutate_and_test
    from cosmic_ray.work_item import TestOutcome

    check_clean(path)
    original = (ROOT / path).read_bytes()
    db, meta, meta_path = open_session(path, entry, config)
    command = server.command(entry["tests"], config["timeout"])
    pending = sorted(db.pending_work_items, key=lambda item: item.mutations[0].start_pos)
    print(f"{path}: {len(pending)} mutants pending; tests: {' '.join(entry['tests'])}", flush=True)
    if pending:  # the subset must pass on the real file, or every mutant would count as killed
        from cosmic_ray.testing import run_tests

        outcome, output = run_tests(command, config["timeout"] + 30)
        if outcome != TestOutcome.SURVIVED:
            raise SystemExit(f"{path}: its tests fail without any mutant; fix them first:\n{output[-2000:]}")
    deadline = time.time() + 60 * limit_minutes if limit_minutes else None
    try:
        for n, item in enumerate(pending, 1):
            if deadline and time.time() > deadline:
                print(f"{path}: time limit reached, {len(pending) - n + 1} left pending", flush=True)
                break
            start = time.perf_counter()
            result = mutate_and_test(item.mutations, command, config["timeout"] + 30)
            if SERVER_FAILED in (result.output or "") or server.process.poll() is not None:
                raise SystemExit(f"{path}: the fork server failed; mutant left pending: {result.output}")
            db.set_result(item.job_id, result)
            key = f"line {item.mutations[0].start_pos[0]}, {mutant_key(item.mutations[0], result.diff)}"
            outcome = (result.test_outcome or result.worker_outcome).value
            if result.test_outcome == TestOutcome.SURVIVED and item.job_id not in meta["ever_survived"]:
                meta["ever_survived"].append(item.job_id)
                meta_path.write_text(json.dumps(meta, indent=1))
            print(f"  [{n}/{len(pending)}] {outcome} {time.perf_counter() - start:.1f}s  {key}", flush=True)
    finally:
        if (ROOT / path).read_bytes() != original:
            (ROOT / path).write_bytes(original)
            print(f"{path}: restored the original source", flush=True)
        db.close()
        if git("diff", "--quiet", "HEAD", "--", path).returncode != 0:
            raise SystemExit(f"{path} differs from git HEAD after the run: inspect `git diff {path}`")


# -- the report --------------------------------------------------------------------------
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


def _interrupt(*_) -> None:
    raise KeyboardInterrupt  # so that every file is restored on `kill`


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:  # kept light: this runs once per mutant
        return client(argv[1], float(argv[2]), argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="files to mutate (default: every file in the configuration)")
    parser.add_argument("--report", action="store_true", help="only rewrite benchmarks/results/mutation.md")
    parser.add_argument("--reset", action="store_true", help="forget the results of FILES and start over")
    parser.add_argument("--max-minutes", type=float, help="stop each file after this long (the rest stays pending)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    config = load_config()
    unknown = [f for f in args.files if f not in config["files"]]
    if unknown:
        parser.error(f"not configured in [tool.densreg.mutation.files]: {', '.join(unknown)}")
    files = args.files or list(config["files"])
    if args.reset:
        for f in files:
            for suffix in (".sqlite", ".json"):
                (SESSIONS / f"{slug(f)}{suffix}").unlink(missing_ok=True)
    if not args.report:
        check_editable_install()
        for f in files:
            check_clean(f)
        os.nice(19)
        server = ForkServer()
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            for f in files:
                run_file(f, config["files"][f], config, server, args.max_minutes)
                write_report(config)
        finally:
            server.close()
    write_report(config)
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
