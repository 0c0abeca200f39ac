"""Running the mutants (tools/mutation.py): the configuration, the safety checks, each file's
cosmic-ray session and the fork server its tests run in.

Safety: cosmic-ray writes each mutant into the file in place, runs the file's tests, and puts the
file back; the tool refuses a file with uncommitted changes (``check_clean``), restores it itself
on any exit, and checks ``git diff`` afterwards (``run_file``).

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
"""

from __future__ import annotations

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
# The command line (tools/mutation.py) that the fork server and its clients run as: --serve, --client.
CLI = str(Path(__file__).with_name("mutation.py"))
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
        self.process = subprocess.Popen([sys.executable, CLI, "--serve", self.address], cwd=ROOT, env=env,
                                        start_new_session=True)  # its own group: close() ends its test runs too
        while not os.path.exists(self.address):
            if self.process.poll() is not None:
                raise SystemExit("the fork server did not start")
            time.sleep(0.1)

    def command(self, tests: list[str], timeout: float) -> str:
        return shlex.join([sys.executable, CLI, "--client", self.address, str(timeout), *PYTEST_ARGS, *tests])

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
