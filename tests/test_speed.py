"""Speed machinery: --threads, device batch sizes, bf16 autocast, compile, and the benchmark scripts' smoke runs.

Timings are never asserted: the machine is shared. The scripts run in subprocesses (they
set the process's thread count).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import densreg
from densreg.app import performance
from densreg.app.cli import cli
from densreg.app.evaluation import evaluate
from densreg.registry import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_requested_threads():
    yield
    performance.set_threads(None)


def test_threads_default_per_kind_and_task_then_omp_num_threads_then_the_argument(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(performance, "cpu_cores", lambda: 4)
    row = densreg.create_model("row-lstm", (1, 4, 4), layers=1, hidden=4, output_hidden=4)
    diagonal = densreg.create_model("diagonal-bilstm", (1, 4, 4), layers=1, hidden=4, output_hidden=4)
    # measured: training and evaluation gain from every core; sampling row-lstm does not, diagonal does
    assert performance.threads_for(row) == performance.threads_for(diagonal) == 4
    assert performance.threads_for(row, task="sample") == 1
    assert performance.threads_for(diagonal, task="sample") == 4
    with pytest.raises(ConfigError, match="task must be one of"):
        performance.threads_for(row, task="train")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert performance.threads_for(row) == performance.threads_for(row, task="sample") == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")  # not a positive integer: ignored
    assert performance.threads_for(row) == 4
    assert performance.threads_for(row, 2) == 2
    performance.set_threads(3)
    assert performance.threads_for(row) == 3
    before = torch.get_num_threads()
    with performance.using_threads(row, 1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        performance.set_threads(0)


def test_threads_option_on_every_computing_command(tmp_path):
    runner = CliRunner()
    for command in ("train", "eval", "sample", "features", "export", "check", "score", "complete"):
        result = runner.invoke(cli, [command, "--help"])
        assert "--threads" in result.output, command
    result = runner.invoke(cli, ["train", "bernoulli", "--dataset", "digits", "--threads", "0", "--out",
                                 str(tmp_path / "b.safetensors")])
    assert result.exit_code == 2 and "--threads" in result.output
    out = tmp_path / "n.safetensors"
    result = runner.invoke(cli, ["train", "nade", "--dataset", "digits", "--set", "hidden=8", "--epochs", "1",
                                 "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["sample", str(out), "-n", "2", "--threads", "1", "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output


def test_fit_validates_on_its_own_threads_not_the_evaluation_default(monkeypatch):
    # fit(threads=1) once scored each epoch's validation set on every core (evaluate's default), which on a
    # shared machine made rnade's epochs several times slower than its training steps
    from densreg.app import gradient_run, training

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(performance, "cpu_cores", lambda: 3)
    seen = []
    real = training.evaluate

    def spy(*args, **kwargs):
        seen.append(performance.threads_for(args[0], kwargs.get("threads")))
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", spy)  # closed form
    monkeypatch.setattr(gradient_run, "evaluate", spy)  # each epoch of gradient training
    x = torch.randint(0, 2, (20, 1, 2, 2))
    for name, config, epochs in (("nade", {"hidden": 3}, {"epochs": 2}), ("bernoulli", {}, {})):
        seen.clear()  # gradient-trained (once per epoch), then closed form (once)
        densreg.fit(densreg.create_model(name, (1, 2, 2), **config), x, x, threads=1, **epochs)
        assert seen == [1] * max(1, len(epochs) and 2), name
        seen.clear()
        densreg.fit(densreg.create_model(name, (1, 2, 2), **config), x, x, threads=2, **epochs)
        assert seen and set(seen) == {2}, name


def test_eval_batch_per_device_gives_the_same_nll():
    assert performance.eval_batch_size("cpu") < performance.eval_batch_size("cuda")
    plain = densreg.create_model("pixelrnn", (1, 2, 2), hidden=4)
    row = densreg.create_model("row-lstm", (1, 2, 2), hidden=4, layers=1, output_hidden=4)
    # measured (benchmarks/results/eval_batch.md): the plain pixelrnn scores fastest in smaller CPU batches
    assert performance.eval_batch_size("cpu", plain) < performance.eval_batch_size("cpu", row) == \
        performance.eval_batch_size("cpu") == performance.EVAL_BATCH["cpu"]
    assert performance.eval_batch_size("cuda", plain) == performance.eval_batch_size("cuda")
    torch.manual_seed(0)
    model = densreg.create_model("nade", (1, 4, 4), hidden=6)
    x = torch.randint(0, 2, (250, 1, 4, 4))
    default = evaluate(model, x)  # batches of eval_batch_size("cpu")
    assert default["images"] == 250
    assert abs(default["nll_nats"] - evaluate(model, x, batch_size=250)["nll_nats"]) < 1e-5


@pytest.mark.parametrize("name, config", [("nade", {"hidden": 16}), ("row-lstm", {"layers": 2, "hidden": 8}),
                                          ("diagonal-bilstm", {"layers": 2, "hidden": 8})])
def test_bf16_loss_and_gradients_are_close_to_float32(name, config):
    """bf16 autocast (matrix products and convolutions in bf16): the loss within 1% and the gradient
    within 0.99 cosine of float32 (measured: 0.1% and 0.998-0.99995 for the PixelRNNs; NADE's
    hand-written pass keeps its float32 products)."""
    torch.manual_seed(0)
    model = densreg.create_model(name, (1, 6, 6), **config)
    x = torch.randint(0, 2, (64, 1, 6, 6))
    losses, grads = {}, {}
    for precision in performance.PRECISIONS:
        model.zero_grad()
        with performance.autocast(precision, "cpu"):
            loss = -model.log_prob(x).float().mean()
        loss.backward()
        losses[precision] = float(loss.detach())
        grads[precision] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert abs(losses["bf16"] - losses["float32"]) < 1e-2 * losses["float32"]
    cosine = torch.nn.functional.cosine_similarity(grads["bf16"], grads["float32"], dim=0)
    assert cosine > 0.99


def test_bf16_training_learns_and_bad_precision_is_refused():
    train = densreg.load_split("digits", "train")[:300]
    fresh = densreg.create_model("nade", (1, 8, 8), hidden=16)
    before = evaluate(fresh, train)["nll_nats"]
    metrics = densreg.fit(fresh, train, epochs=2, precision="bf16", lr=0.01)
    assert metrics["train_nll_nats"] < before
    with pytest.raises(ConfigError, match="precision must be one of float32, bf16"):
        densreg.fit(fresh, train, epochs=1, precision="fp8")


def test_compiled_evaluation_matches_and_reports_its_compile_time():
    model = densreg.create_model("bernoulli", (1, 4, 4))
    model.fit_closed_form(torch.randint(0, 2, (50, 1, 4, 4)))
    x = torch.randint(0, 2, (30, 1, 4, 4))
    plain = evaluate(model, x)
    compiled = evaluate(model, x, batch_size=10, compile=True)
    assert compiled["compile_seconds"] > 0
    assert abs(compiled["nll_nats"] - plain["nll_nats"]) < 1e-4


def test_compiled_training_runs_its_compiled_graph_on_full_batches_only(monkeypatch):
    shapes = []

    def recording_compile(fn, **options):  # stands in for torch.compile: records what the "graph" runs on
        assert options == {"mode": None, "dynamic": False}

        def graph(images):
            shapes.append(tuple(images.shape))
            return fn(images)
        return graph

    monkeypatch.setattr(performance.torch, "compile", recording_compile)
    torch.manual_seed(0)
    model = densreg.create_model("nade", (1, 3, 3), hidden=4)
    x = torch.randint(0, 2, (25, 1, 3, 3))
    metrics = densreg.fit(model, x, x, epochs=2, batch_size=10, compile=True)
    assert shapes == [(10, 1, 3, 3)] * 4  # two full batches per epoch; each epoch's last 5 images run eager
    assert metrics["compile_seconds"] > 0
    compiled = performance.compiled_log_prob(model, "cpu")
    torch.testing.assert_close(compiled(x[:3]), model.log_prob(x[:3]), rtol=0, atol=0)
    torch.testing.assert_close(compiled(x[:7]), model.log_prob(x[:7]), rtol=0, atol=0)
    assert shapes[-1] == (3, 1, 3, 3) and len(shapes) == 5  # the first call's shape is the compiled one


def test_speed_benchmark_smoke(tmp_path):
    out = tmp_path / "speed.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--quick", "--size", "4",
                           "--reps", "1", "--models", "nade,row-lstm,markov", "--no-threads-probe", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "Load average" in text and "GB/s" in text and "GFLOP/s" in text
    for row in ("| nade | train |", "| nade | log_prob |", "| nade | sample |", "| row-lstm | train |",
                "| markov | train |"):
        assert row in text
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--models", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown models" in bad.stderr


def test_eval_batch_benchmark_smoke(tmp_path):
    """benchmarks/eval_batch.py: one row per model, one cell per batch size, the fastest in bold, the device's
    evaluation batch named; bad arguments exit 2 with a message."""
    out = tmp_path / "eval_batch.md"
    script = str(ROOT / "benchmarks" / "eval_batch.py")
    done = subprocess.run([sys.executable, script, "--models", "row-lstm,nade", "--batches", "1,3", "--images", "3",
                           "--reps", "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "Load average" in text and "| model | batch 1 | batch 3 |" in text
    assert f"(`performance.eval_batch_size`): row-lstm {performance.eval_batch_size('cpu')}, nade" in text
    for name in ("row-lstm", "nade"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        assert row.count("**") == 2 and row.count("(") == 2
    for args, message in ((["--models", "nope"], "unknown models"), (["--batches", "a,2"], "comma-separated integers"),
                          (["--batches", "0"], "must be positive")):
        bad = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and message in bad.stderr, args


def test_compile_benchmark_break_even_and_bad_models():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from compile import break_even
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    # 10 s of compiling, 100 -> 200 images/s saves 5 ms per image: paid back after 2,000 images
    assert break_even(10.0, 100.0, 200.0) == "2,000"
    assert break_even(10.0, 200.0, 100.0) == break_even(10.0, 100.0, 100.0) == "never"
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile.py"), "--models", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown models" in bad.stderr


def test_compile_benchmark_gradient_agreement_measures_the_difference():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from compile import gradient_agreement
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    torch.manual_seed(0)
    model = densreg.create_model("nade", (1, 3, 3), hidden=5)
    x = torch.randint(0, 2, (6, 1, 3, 3))

    def stand_in(log_prob):  # plays the compiled model: only its log_prob is used
        return type("Compiled", (), {"log_prob": staticmethod(log_prob)})

    assert gradient_agreement(model, stand_in(model.log_prob), x) == pytest.approx((1.0, 0.0))
    # twice the loss: the same direction, every entry off by itself (the largest by the largest)
    assert gradient_agreement(model, stand_in(lambda images: 2 * model.log_prob(images)), x) == pytest.approx((1.0, 1.0))
    cosine, relative = gradient_agreement(model, stand_in(lambda images: model.log_prob(1 - images)), x)
    assert cosine < 0.99 and relative > 0.01
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow  # about a minute: two cold compiles of a tiny NADE
def test_compile_benchmark_smoke(tmp_path):
    out = tmp_path / "compile.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile.py"), "--models", "nade", "--size", "4",
                           "--reps", "1", "--eval-batch", "8", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "| nade | train | 100 |" in text and "| nade | log_prob | 8 |" in text and "cold (a fresh inductor cache)" in text
    train_row = next(line for line in text.splitlines() if line.startswith("| nade | train"))
    cosine = float(train_row.split("|")[-2].split()[0])  # the gradient column: "cosine (max rel. difference)"
    assert 0.999 < cosine <= 1.0 + 1e-6


def run_gpu_sh(tmp_path, **env):
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], cwd=ROOT, capture_output=True, text=True,
                          timeout=400, env={**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), **env})


@pytest.mark.slow  # about a minute: the speed benchmark, a training and an evaluation in subprocesses
def test_gpu_script_dry_run_on_cpu(tmp_path):
    done = run_gpu_sh(tmp_path, DENSREG_GPU_SH_DRYRUN="1")
    assert done.returncode == 0, done.stdout[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    assert "device cpu (dry run: 1)" in summary
    assert "row-lstm epoch 1:" in summary and '"nll_nats"' in summary
    assert (tmp_path / "speed-cpu.md").is_file() and (tmp_path / "row-lstm-gpu.safetensors").is_file()
    assert "+ timeout" in (tmp_path / "gpu.log").read_text()  # set -x logging


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_gpu_script_stops_without_cuda(tmp_path):
    done = run_gpu_sh(tmp_path, DENSREG_GPU_SH_NO_INSTALL="1")
    assert done.returncode == 2
    assert "CUDA is not available" in (tmp_path / "summary.md").read_text()
