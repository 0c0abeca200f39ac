"""Training and scoring across processes: torchrun with gloo on the CPU, DDP, rank 0 alone writing.

The runs are tiny (NADE with 16 hidden units on the 8x8 digits, one or two epochs) and go
through the real launcher: ``densreg train --nproc 2`` (which becomes torchrun) or
``python -m torch.distributed.run --standalone`` (a free port each time). Every process a
test starts is ended by the test, even when it fails.

Tolerance of the parameter equivalence (2 processes vs 1, same global batch, same order):
atol 1e-6 on parameters of size 0.1-0.9 (measured: at most 1.2e-7 after one epoch of 24
steps). DDP all-reduces gradients that each rank summed over its part of the batch, so the
float32 sums run in another order (relative rounding ~1e-7 per step), and Adam, which divides
by sqrt(v), passes such differences on at lr scale instead of damping them. Any real error
(an image missed or counted twice, a part weighted 1/2 instead of 1, as averaging per-rank
means would do for the lone image of the last batch) changes a whole Adam step, which moves
parameters by up to lr = 5e-3, far above the tolerance.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from densreg.app import distributed
from densreg.app.cli import cli
from densreg.app.run_files import run_paths
from densreg.app.training import fit
from densreg.registry import ConfigError, create_model, load_checkpoint, load_split

if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

HIDDEN, BATCH, SEED = 16, 52, 3  # 1197 = 23 x 52 + 1: the last batch leaves rank 1 nothing
TRAIN_ARGS = ["train", "nade", "--dataset", "digits", "--set", f"hidden={HIDDEN}", "--batch-size", str(BATCH),
              "--seed", str(SEED), "--device", "cpu"]
TIMEOUT = 240  # seconds for one launched job on a loaded 2-core machine


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(nproc: int, *args) -> list[str]:
    return distributed.torchrun_command(nproc, [str(a) for a in args])


def children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(item[5:]) for item in env if item.startswith(b"RANK=")]
    return ranks[0] if ranks else None


class Job:
    """A launched command whose every process is killed when the test ends."""

    def __init__(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.seen: set[int] = set()

    def workers(self) -> dict[int, int]:
        """{rank: pid} of the live worker processes."""
        pids = children(self.proc.pid)
        self.seen.update(pids)
        return {rank_of(p): p for p in pids if rank_of(p) is not None}

    def wait(self, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"{self.proc.args} did not end in {timeout} s:\n{err[-3000:]}")
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)

    def kill(self) -> None:
        for pid in [*children(self.proc.pid), *self.seen, self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def jobs():
    started: list[Job] = []

    def start(command):
        started.append(Job(command))
        return started[-1]

    yield start
    for job in started:
        job.kill()
        job.proc.wait()


def run_job(jobs, command) -> subprocess.CompletedProcess:
    result = jobs(command).wait()
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def reference_model(epochs: int, out: Path | None = None):
    """NADE trained in this process exactly as `densreg train` does (seed, digits, options)."""
    torch.manual_seed(SEED)
    model = create_model("nade", (1, 8, 8), 2, hidden=HIDDEN)
    metrics = fit(model, load_split("digits", "train"), load_split("digits", "valid"), epochs=epochs,
                  batch_size=BATCH, seed=SEED, device="cpu", out=out, name="nade")
    return model, metrics


def saved_state(out: Path) -> dict[str, torch.Tensor]:
    """The weights after the last epoch (the resume state's; the checkpoint holds the best)."""
    return load_checkpoint(run_paths(out).state)[0].state_dict()


def log_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in run_paths(out).log.read_text().splitlines()]


def assert_same_weights(state: dict, model, atol: float = 1e-6) -> None:
    for key, value in model.state_dict().items():
        torch.testing.assert_close(state[key], value, atol=atol, rtol=0, msg=lambda m: f"{key}: {m}")


@pytest.fixture(scope="module")
def references():
    """One and two epochs of NADE in this process: {epochs: (model, metrics)}."""
    return {epochs: reference_model(epochs) for epochs in (1, 2)}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """`densreg train --nproc 2 ... --epochs 1`: (out path, completed process)."""
    folder = tmp_path_factory.mktemp("ddp")
    out = folder / "two.safetensors"
    job = Job([sys.executable, "-m", "densreg", *TRAIN_ARGS, "--epochs", "1", "--out", str(out), "--nproc", "2"])
    try:
        result = job.wait()
    finally:
        job.kill()
    assert result.returncode == 0, result.stderr[-4000:]
    return out, result


def test_two_processes_train_like_one_with_the_same_global_batch(two_process_run, references):
    out, result = two_process_run
    model, metrics = references[1]
    assert_same_weights(saved_state(out), model)
    [entry] = log_of(out)
    assert entry["processes"] == 2 and entry["images"] == 1197
    assert entry["valid_nll"] == pytest.approx(metrics["valid_nll_nats"], rel=1e-6)
    assert entry["train_nll"] == pytest.approx(metrics["train_nll_nats"], rel=1e-6)
    # rank 0 alone wrote and printed: the run's three files, one "wrote" line, one launch line
    assert sorted(p.name for p in out.parent.iterdir()) == ["two.last.safetensors", "two.log.jsonl",
                                                            "two.safetensors"]
    assert result.stdout.count("wrote ") == 1
    assert "torch.distributed.run --standalone" in result.stderr and "in 2 processes" in result.stderr
    assert result.stderr.count("epoch 1: train") == 1


def test_resume_on_one_process_continues_a_two_process_run(two_process_run, references, tmp_path):
    out = tmp_path / "moved.safetensors"
    for source, target in zip(run_paths(two_process_run[0]), run_paths(out)):
        shutil.copy(source, target)
    torch.manual_seed(99)  # other initial weights: everything must come from the resume state
    model = create_model("nade", (1, 8, 8), 2, hidden=HIDDEN)
    fit(model, load_split("digits", "train"), load_split("digits", "valid"), epochs=2, out=out, resume=True)
    assert_same_weights(model.state_dict(), references[2][0])
    assert [(e["epoch"], e["processes"]) for e in log_of(out)] == [(1, 2), (2, 1)]


@pytest.mark.parametrize("nproc", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_resume_on_more_processes_continues_a_one_process_run(references, tmp_path, jobs, nproc):
    out = tmp_path / "one.safetensors"
    reference_model(1, out)
    run_job(jobs, torchrun(nproc, *TRAIN_ARGS, "--epochs", "2", "--out", out, "--resume"))
    assert_same_weights(saved_state(out), references[2][0])
    assert [(e["epoch"], e["processes"]) for e in log_of(out)] == [(1, 1), (2, nproc)]
    assert log_of(out)[1]["valid_nll"] == pytest.approx(references[2][1]["valid_nll_nats"], rel=1e-6)


@pytest.mark.parametrize("victim", [0, 1])
def test_sigkill_of_one_rank_ends_the_job_with_the_last_epoch_on_disk(tmp_path, jobs, victim):
    out = tmp_path / "killed.safetensors"
    job = jobs(torchrun(2, *TRAIN_ARGS, "--epochs", 100000, "--patience", 100000, "--out", out))
    deadline = time.time() + TIMEOUT
    while not run_paths(out).state.exists() and time.time() < deadline and job.proc.poll() is None:
        time.sleep(0.1)
    assert run_paths(out).state.exists(), job.wait(1).stderr[-3000:]
    time.sleep(0.3)  # then at an arbitrary moment, likely mid-epoch or mid-write
    workers = job.workers()
    assert sorted(workers) == [0, 1]
    os.kill(workers[victim], signal.SIGKILL)
    result = job.wait(90)  # torchrun ends the other rank and fails
    assert result.returncode != 0
    assert not [pid for pid in workers.values() if Path(f"/proc/{pid}").exists() and rank_of(pid) is not None]
    model, info = load_checkpoint(out)
    last = run_paths(out).state
    done = json.loads(safe_open(str(last), framework="pt").metadata()["extra"])["resume"]["epoch"]
    assert done >= 1 and log_of(out)[-1]["epoch"] == done
    torch.manual_seed(0)
    resumed = create_model("nade", (1, 8, 8), 2, hidden=HIDDEN)
    metrics = fit(resumed, load_split("digits", "train")[:100], None, epochs=done + 1, out=out, resume=True)
    assert metrics["epochs"] == done + 1


def test_eval_shards_images_across_ranks(two_process_run, jobs):
    out = two_process_run[0]
    args = ["eval", out, "--dataset", "digits", "--split", "train", "--batch-size", 128, "--json"]
    alone = CliRunner().invoke(cli, [str(a) for a in args])
    assert alone.exit_code == 0, alone.output
    shared = run_job(jobs, torchrun(2, *args))
    expected, got = json.loads(alone.stdout), json.loads(shared.stdout)  # rank 0 alone prints
    assert got["images"] == expected["images"] == 1197
    assert got["nll_nats"] == pytest.approx(expected["nll_nats"], rel=1e-9)


def test_score_shards_images_and_writes_every_result_in_input_order(two_process_run, jobs, tmp_path):
    def args(out):
        return ["score", two_process_run[0], "--dataset", "digits", "--split", "train", "--method", "typicality",
                "--batch-size", 128, "--top", 3, "--out", out, "--json"]

    alone = CliRunner().invoke(cli, [str(a) for a in args(tmp_path / "alone.csv")])
    assert alone.exit_code == 0, alone.output
    shared = run_job(jobs, torchrun(2, *args(tmp_path / "shared.csv")))
    rows = [list(csv.DictReader((tmp_path / f"{n}.csv").open())) for n in ("alone", "shared")]
    assert len(rows[1]) == 1197 and [r["name"] for r in rows[1]] == [r["name"] for r in rows[0]]
    for column in ("score", "nll_nats", "p_value"):
        assert [float(r[column]) for r in rows[1]] == pytest.approx([float(r[column]) for r in rows[0]], rel=1e-6)
    top = [[row["index"] for row in json.loads(out)["most_anomalous"]] for out in (alone.stdout, shared.stdout)]
    assert top[1] == top[0] and len(top[0]) == 3
    assert shared.stderr.count("wrote ") == 1  # rank 0 alone


def _gather_worker(rank: int, size: int, folder: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=size)
    try:
        here = distributed.world()
        assert (here.rank, here.size, here.leader) == (rank, size, rank == 0)
        items = torch.arange(10)
        results = distributed.map_shards(lambda part: torch.stack([part * 2.5, part + rank * 0.0], 1), items)
        torch.testing.assert_close(results, torch.stack([items * 2.5, items.double() * 1.0], 1).to(results.dtype))
        calls = []
        distributed.map_shards(lambda part: calls.append(part.tolist()) or part, items)
        assert calls == [list(range(rank * 10 // size, (rank + 1) * 10 // size))]
        assert distributed.all_sum(rank, 1) == [sum(range(size)), size]
        assert distributed.leader_decides(rank == 0) is True
        with distributed.leader_file(Path(folder) / ("data" if rank == 0 else "absent")) as path:
            assert path.read_bytes() == b"rank 0's bytes\x00\xff"
        with distributed.leader_file(Path(folder) / ("empty" if rank == 0 else "absent")) as path:
            assert path.read_bytes() == b""
        missing = Path(folder) / "missing"
        with distributed.leader_file(missing) as path:
            assert not path.exists()
        batch = torch.arange(7)
        assert distributed.split_batch(batch).tolist() == list(range(rank, 7, size))
    finally:
        torch.distributed.destroy_process_group()


def test_shards_gather_in_input_order_and_rank_0_shares_its_files(tmp_path):
    (tmp_path / "data").write_bytes(b"rank 0's bytes\x00\xff")
    (tmp_path / "empty").write_bytes(b"")
    context = torch.multiprocessing.start_processes(_gather_worker, args=(3, str(tmp_path)), nprocs=3, join=False,
                                                    start_method="fork")
    deadline = time.time() + 120
    try:
        while not context.join(timeout=1):
            assert time.time() < deadline, "the ranks did not finish"
    finally:
        for pid in context.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_nproc_relaunches_the_same_command_under_torchrun(monkeypatch, tmp_path):
    from densreg.app import torchrun as watched

    launched = []
    monkeypatch.setattr(watched, "run_torchrun", lambda command, state, debug: launched.append(command))
    out = str(tmp_path / "x.safetensors")
    result = CliRunner().invoke(cli, ["train", "nade", "--dataset", "digits", "--nproc", "3", "--out", out,
                                      "--epochs", "2", "--nproc=3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    [args] = launched
    assert args == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                    "--nproc-per-node", "3", "-m", "densreg", "train", "nade", "--dataset", "digits", "--out", out,
                    "--epochs", "2", "--device", "cpu"]
    assert "training with torchrun: " in result.stderr


def test_distributed_option_errors(monkeypatch, tmp_path):
    out = str(tmp_path / "x.safetensors")
    result = CliRunner().invoke(cli, ["train", "nade", "--dataset", "digits", "--out", out, "--nproc", "0"])
    assert result.exit_code == 2 and "--nproc" in result.output
    result = CliRunner().invoke(cli, ["train", "nade", "--dataset", "digits", "--out", out, "--backend", "carrier"])
    assert result.exit_code == 2 and "--backend" in result.output
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(cli, ["train", "nade", "--dataset", "digits", "--out", out, "--nproc", "2"])
    assert result.exit_code == 1 and "under torchrun, leave it out" in result.output
    assert not (tmp_path / "x.safetensors").exists()


def test_backend_follows_the_device_unless_overridden(monkeypatch):
    monkeypatch.delenv(distributed.BACKEND_ENV, raising=False)
    assert distributed.choose_backend(torch.device("cpu")) == "gloo"
    assert distributed.choose_backend(torch.device("cuda", 0)) == "nccl"
    assert distributed.choose_backend(torch.device("cuda", 0), "gloo") == "gloo"
    monkeypatch.setenv(distributed.BACKEND_ENV, "gloo")
    assert distributed.choose_backend(torch.device("cuda", 0)) == "gloo"
    with pytest.raises(ConfigError, match="unknown distributed backend 'tcp'"):
        distributed.choose_backend(torch.device("cpu"), "tcp")
    assert distributed.rank_device("cpu", 3) == torch.device("cpu")
    if not torch.cuda.is_available():  # a device this machine lacks is one line, whichever rank asks
        for name in ("cuda", "cuda:1"):
            with pytest.raises(ConfigError, match=f"device '{name}': CUDA is not available here"):
                distributed.rank_device(name, 7)
        return
    if torch.cuda.device_count() > 1:
        assert distributed.rank_device("cuda:1", 0) == torch.device("cuda", 1)
    if torch.cuda.device_count() < 8:
        with pytest.raises(ConfigError, match="start at most that many processes per machine"):
            distributed.rank_device("cuda", 7)


def test_shards_split_any_count_evenly_without_overlap():
    for count in (0, 1, 2, 7, 1197):
        for size in (1, 2, 3, 4):
            parts = [distributed.shard(count, distributed.World(rank, size)) for rank in range(size)]
            assert [i for part in parts for i in range(count)[part]] == list(range(count))
            assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1
    batch = torch.arange(101)
    parts = [distributed.split_batch(batch, distributed.World(rank, 2)) for rank in range(2)]
    assert sorted(torch.cat(parts).tolist()) == batch.tolist() and [len(p) for p in parts] == [51, 50]
    assert distributed.without_option(["train", "--nproc", "2", "--out", "x", "--nproc=4"], "--nproc") == \
        ["train", "--out", "x"]


@pytest.mark.parametrize("body, code, stdout, stderr", [
    ("print('done')", 0, "done\n", ""),
    ("print('partial'); sys.exit(3)", 3, "partial\n", ""),
    ("sys.exit('Error: bad input')", 1, "", "Error: bad input\n"),
])
def test_a_launched_command_exits_with_its_code_and_output_but_without_shutdown(body, code, stdout, stderr):
    # an atexit handler stands for interpreter shutdown, where Gloo's threads could abort the process
    script = ("import atexit, sys\nfrom densreg.app.launcher import run_then_exit\n"
              "atexit.register(lambda: print('shutdown ran'))\n"
              f"def command():\n    {body}\nrun_then_exit(command)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (code, stdout, stderr)
