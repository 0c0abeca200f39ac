"""The hostile-input catalogue through the CLI (cases in hostile_cases.py, hostile_crafted.py, hostile_trust.py
and hostile_results.py): each
case runs `python -m densreg ARGS` in its own subprocess, with a wall-clock timeout and an
address-space limit (RLIMIT_AS in the child), on files made in a temporary folder, and must end as
the case expects: "error" (non-zero exit with one clear line on stderr: ``Error: ...`` or click's
usage error) or "ok" (exit 0 where success is the right answer, e.g. a non-UTF-8 file name).

Anything else fails the case, named by its outcome: traceback (a Python traceback or an ``Error:
unexpected <Type>`` line), hang (still running at the timeout), unbounded allocation (MemoryError,
killed by a signal), data lost (a file that must survive changed), accepted (exit 0 for input
that should have been refused).

Slow (about 250 cases of 5-15 s each): ``pytest -m slow tests/test_hostile_catalogue.py``, a part
with ``-k 'resume or export'``. Settings: DENSREG_HOSTILE_TIMEOUT (seconds per case, default 90),
DENSREG_HOSTILE_MEMORY_GIB (address space per case, default 8); DENSREG_HOSTILE_REPORT=FILE.md
writes the outcome table of the cases run (e.g. benchmarks/results/hostile.md).
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostile_cases import Case, Catalogue, argument_cases, name_cases, target_cases
from hostile_crafted import checkpoint_cases, data_cases, export_cases, resume_cases
from hostile_results import result_cases
from hostile_trust import trust_cases

GROUPS = (checkpoint_cases, resume_cases, export_cases, data_cases, argument_cases, target_cases, name_cases,
          trust_cases, result_cases)
OUTCOMES = ("error", "ok", "traceback", "hang", "unbounded allocation", "data lost", "accepted")
TIMEOUT_S = float(os.environ.get("DENSREG_HOSTILE_TIMEOUT", 90))
MEMORY_BYTES = int(float(os.environ.get("DENSREG_HOSTILE_MEMORY_GIB", 8)) * 2**30)
PROGRESS = re.compile(r"onnxruntime:|training |epoch \d+: ")  # stderr lines of progress, not of outcome
HOLD = "import sys, time\nfrom densreg.registry.locking import output_lock\nwith output_lock(sys.argv[1]):\n" \
       "    print('held', flush=True)\n    time.sleep(3600)\n"


def catalogue(folder: Path) -> Catalogue:
    """Every case, with its files under ``folder`` (not yet written: call ``make``)."""
    cat = Catalogue(folder)
    for group in GROUPS:
        group(cat)
    return cat


CASES = [case.name for case in catalogue(Path("/nonexistent")).cases]  # declared only: nothing is written


def test_the_catalogue_declares_its_cases_without_files(tmp_path):
    cat = catalogue(tmp_path)
    assert [case.name for case in cat.cases] == CASES and len(set(CASES)) == len(CASES) > 240
    assert cat.steps and not any(tmp_path.iterdir())  # the files come from make() alone


# -- running one case ------------------------------------------------------------------------------

def fingerprint(path: Path):
    """What 'unchanged' means for a protected path: its type and, for a regular file, its bytes."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISREG(info.st_mode):
        return ("file", stat.S_IMODE(info.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    if stat.S_ISLNK(info.st_mode):
        return ("link", os.readlink(path))
    return (stat.S_IFMT(info.st_mode), info.st_ino)


def limit_memory(limit_bytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
        os.setsid()
    return apply


def run_densreg(case: Case, cwd: Path) -> tuple[int, bytes, bytes, bool, float]:
    """Run the case's command: (exit status, stdout, stderr, hung?, seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **case.env}
    env.pop("DENSREG_DEBUG", None)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "densreg", *case.args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                            preexec_fn=limit_memory(MEMORY_BYTES))
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
        hung = False
    except subprocess.TimeoutExpired:
        hung = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return proc.returncode, out, err, hung, time.perf_counter() - start


def run_case(case: Case, cwd: Path) -> dict:
    """Run ``case`` (with another process holding its ``holder``'s lock, if any) and classify it."""
    before = {p: fingerprint(p) for p in case.protect}
    holder = None
    if case.holder:
        holder = subprocess.Popen([sys.executable, "-c", HOLD, case.holder], stdout=subprocess.PIPE, text=True)
        holder.stdout.readline()
    try:
        rc, out, err, hung, seconds = run_densreg(case, cwd)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    changed = any(before[p] != fingerprint(p) for p in case.protect)
    stderr = err.decode("utf-8", "replace").strip()
    lines = [line for line in stderr.splitlines() if line.strip() and not PROGRESS.match(line)]
    last = lines[-1] if lines else ""
    return {"name": case.name, "group": case.group, "rc": rc, "seconds": round(seconds, 1),
            "outcome": classify(case, rc, hung, changed, stderr, lines),
            "message": last[:160] if rc else out.decode("utf-8", "replace").strip()[-160:]}


def classify(case: Case, rc: int, hung: bool, changed: bool, stderr: str, lines: list[str]) -> str:
    """One of OUTCOMES for a finished (or hung) run."""
    if hung:
        return "hang"
    if changed:
        return "data lost"
    if rc < 0 or "MemoryError" in stderr or "can't allocate memory" in stderr or "out of memory" in stderr.lower():
        return "unbounded allocation"
    if "Traceback" in stderr or "Error: unexpected" in stderr:
        return "traceback"
    if rc == 0:
        return "ok" if case.expect == "ok" else "accepted"
    if lines and lines[-1].startswith("Error: ") and (len(lines) == 1 or rc == 2):
        return "error"
    return "traceback"


# -- the catalogue as tests ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """(folder, {name: case}) with every file of the catalogue written; removed afterwards."""
    folder = tmp_path_factory.mktemp("hostile")
    cat = catalogue(folder)
    cat.make()
    yield folder, {case.name: case for case in cat.cases}
    for path in folder.rglob("*"):  # make read-only folders removable
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def outcomes():
    """The results of the cases run; written as a table to $DENSREG_HOSTILE_REPORT, if set."""
    results: list[dict] = []
    yield results
    if os.environ.get("DENSREG_HOSTILE_REPORT") and results:
        write_report(results, Path(os.environ["DENSREG_HOSTILE_REPORT"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_hostile_case(name, hostile, outcomes):
    folder, cases = hostile
    case = cases[name]
    if case.needs is not None and not os.path.lexists(case.needs):
        pytest.skip(f"{case.needs.name} cannot be made on this system")
    result = run_case(case, folder)
    outcomes.append(result)
    assert result["outcome"] == case.expect, f"{result['outcome']} (exit {result['rc']}): {result['message']}"


def write_report(results: list[dict], out: Path) -> None:
    """The outcome totals, then one row per case, as Markdown."""
    counts = {c: sum(r["outcome"] == c for r in results) for c in OUTCOMES}
    lines = ["# Hostile inputs through the CLI", "",
             f"`pytest -m slow tests/test_hostile_catalogue.py` (timeout {TIMEOUT_S:g} s, {MEMORY_BYTES / 2**30:g} GiB "
             f"per case): {len(results)} cases in {sum(r['seconds'] for r in results):.0f} s, each `python -m densreg "
             "...` in its own subprocess with an address-space limit (RLIMIT_AS) and a timeout, all files in a "
             "temporary folder.", "",
             "| cases | " + " | ".join(OUTCOMES) + " |", "|---" * (len(OUTCOMES) + 1) + "|",
             f"| {len(results)} | " + " | ".join(str(counts[c]) for c in OUTCOMES) + " |", "",
             "error: non-zero exit with one clear line (or click's usage error); ok: success where success is "
             "right (non-UTF-8 names are supported); traceback: a traceback or an `Error: unexpected <Type>` line; "
             "accepted: bad input taken silently. The goal is zero in the last five columns.", "",
             "| group | case | outcome | exit | s | last line |", "|---|---|---|---|---|---|"]
    for r in results:
        message = r["message"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r['group']} | {r['name']} | {r['outcome']} | {r['rc']} | {r['seconds']} | {message} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
