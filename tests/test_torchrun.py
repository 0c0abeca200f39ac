"""`densreg train --nproc N` checks the device and backend before launching torchrun, and a failed
worker ends in one line naming its rank and what is on disk (app/torchrun.py, issue 28 item 6)."""

from __future__ import annotations

import sys
import time

import pytest
import torch
from click.testing import CliRunner

from densreg.app import torchrun
from densreg.app.cli import cli
from densreg.registry import ConfigError

# what torchrun 2.x prints when a worker is killed (abridged)
AGENT = """W1208 10:00:00.000000 111 torch/distributed/elastic/multiprocessing/api.py:900] Sending process 12 closing signal SIGTERM
E1208 10:00:01.000000 111 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: -9) local_rank: 1 (pid: 13) of binary: python
Traceback (most recent call last):
  File "torch/distributed/run.py", line 905, in main
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2025-12-08_10:00:01
  host      : box
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 13)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 13
============================================================
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("args, message", [
    (["--device", "cuda"], "--device cuda needs CUDA, which this machine does not have"),
    (["--backend", "nccl"], "--backend nccl needs CUDA"),
])
def test_cuda_and_nccl_are_checked_before_torchrun_starts(tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(torchrun, "run_torchrun", lambda *a: pytest.fail("torchrun was started"))
    result = CliRunner().invoke(cli, ["train", "nade", "--dataset", "digits", "--nproc", "2", *args,
                                      "--out", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 1 and message in result.output
    assert result.output.strip().count("\n") == 0


def test_nccl_on_the_cpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match="nccl runs on CUDA devices only"):
        torchrun.check_launch("cpu", "nccl", 2)


def test_a_killed_rank_is_one_line_naming_it_and_the_state_on_disk(tmp_path):
    state = tmp_path / "x.last.safetensors"
    state.write_bytes(b"epoch 3")
    message = torchrun.failure_message(AGENT, [], state, time.time() - 60)
    assert message == (f"rank 1 was killed by SIGKILL; the last finished epoch is on disk in {state}: add "
                       "--resume to the same command to continue")
    assert torchrun.failure_message(AGENT, [], tmp_path / "none", 0).endswith("no epoch had finished, so nothing "
                                                                              "was written")


def test_the_workers_error_line_is_said_once_and_torchruns_traceback_is_hidden(tmp_path, capfd):
    script = ("import sys\nsys.stderr.write('epoch 1: train 3.0\\n')\n"
              "sys.stderr.write('Error: bad data\\n' * 2)\n"
              f"sys.stderr.write({AGENT!r})\nsys.exit(1)\n")
    with pytest.raises(torchrun.WorkerFailed, match=r"^rank 1: bad data$"):
        torchrun.run_torchrun([sys.executable, "-c", script], tmp_path / "x.last.safetensors")
    err = capfd.readouterr().err
    assert "epoch 1: train 3.0" in err and "Traceback" not in err and "Error:" not in err


def test_a_real_torchrun_whose_rank_1_is_killed_ends_in_that_one_line(tmp_path, capfd):
    script = tmp_path / "kill.py"
    script.write_text("import os, signal, time\nif os.environ['RANK'] == '1':\n"
                      "    os.kill(os.getpid(), signal.SIGKILL)\ntime.sleep(3)\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    with pytest.raises(torchrun.WorkerFailed, match=r"^rank 1 was killed by SIGKILL; no epoch had finished"):
        torchrun.run_torchrun(command, tmp_path / "x.last.safetensors")
    assert capfd.readouterr().err.strip() == ""  # torchrun's banner, log lines and traceback are not shown
