"""The gradient training loop: learning, early stopping with the best weights, resume,
kill safety, the per-epoch log, and the train command's options and errors."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from densreg.registry import CheckpointError, ConfigError, create_model, load_checkpoint, load_split
from densreg.app import gradient_run, training
from densreg.app.cli import cli
from densreg.app.evaluation import evaluate
from densreg.app.run_files import run_paths
from densreg.app.training import fit


@pytest.fixture(scope="module")
def digits():
    return load_split("digits", "train")[:300], load_split("digits", "valid")[:100]


def small_nade(seed=0, hidden=16):
    torch.manual_seed(seed)
    return create_model("nade", (1, 8, 8), 2, hidden=hidden)


def test_short_training_lowers_valid_nll(digits, tmp_path):
    train, valid = digits
    model = small_nade()
    before = evaluate(model, valid)["nll_nats"]
    out = tmp_path / "run.safetensors"
    metrics = fit(model, train, valid, epochs=3, batch_size=50, lr=1e-2, out=out)
    assert metrics["valid_nll_nats"] < before - 3
    assert metrics["epochs"] == 3 and {"train_nll_nats", "best_epoch", "seconds"} <= set(metrics)
    assert abs(evaluate(model, valid)["nll_nats"] - metrics["valid_nll_nats"]) < 1e-4
    log = [json.loads(line) for line in run_paths(out)[1].read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3]
    assert {"train_nll", "valid_nll", "seconds", "images_per_s", "lr"} <= set(log[0])
    assert [e["images"] for e in log] == [len(train)] * 3
    assert [e["lr"] for e in log] == pytest.approx([1e-2, 1e-2 * 0.95, 1e-2 * 0.95 ** 2])
    saved, info = load_checkpoint(out)
    assert info.model == "nade" and info.metrics["best_epoch"] == metrics["best_epoch"]
    torch.testing.assert_close(saved.log_prob(valid), model.log_prob(valid), atol=0, rtol=0)


def test_early_stopping_keeps_the_best_weights(digits, tmp_path, monkeypatch):
    train, valid = digits
    scores = iter([30.0, 25.0, 27.0, 28.0, 26.0, 20.0])
    monkeypatch.setattr(gradient_run, "evaluate", lambda *a, **k: {"nll_nats": next(scores)})
    model = small_nade()
    best_weights = {}
    real_save = gradient_run.save_checkpoint

    def spy(path, m, *args, **kwargs):
        if path == tmp_path / "run.safetensors":
            best_weights.update({k: v.clone() for k, v in m.state_dict().items()})
        return real_save(path, m, *args, **kwargs)

    monkeypatch.setattr(gradient_run, "save_checkpoint", spy)
    metrics = fit(model, train, valid, epochs=6, patience=2, lr=1e-2, out=tmp_path / "run.safetensors")
    assert metrics["epochs"] == 4 and metrics["best_epoch"] == 2 and metrics["stopped"] == "patience"
    assert metrics["valid_nll_nats"] == 25.0
    for key, value in model.state_dict().items():
        assert torch.equal(value, best_weights[key])


def test_resume_ends_where_an_uninterrupted_run_ends(digits, tmp_path):
    train, valid = digits
    options = dict(batch_size=64, lr=5e-3, lr_decay=0.9, seed=3, clip_grad=5.0, weight_decay=1e-4)
    whole = small_nade()
    fit(whole, train, valid, epochs=4, out=tmp_path / "whole.safetensors", **options)
    part = small_nade()
    fit(part, train, valid, epochs=2, out=tmp_path / "part.safetensors", **options)
    resumed = small_nade(seed=99)  # different initial weights: everything must come from the state
    # options not given again are taken from the interrupted run
    metrics = fit(resumed, train, valid, epochs=4, out=tmp_path / "part.safetensors", resume=True)
    assert metrics["epochs"] == 4
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=1e-6, rtol=0)
    logs = [[json.loads(line) for line in run_paths(tmp_path / f"{n}.safetensors")[1].read_text().splitlines()]
            for n in ("whole", "part")]
    assert [e["epoch"] for e in logs[1]] == [1, 2, 3, 4]
    for a, b in zip(*logs):
        assert a["train_nll"] == pytest.approx(b["train_nll"], abs=1e-6)
        assert a["valid_nll"] == pytest.approx(b["valid_nll"], abs=1e-6)


def test_ema_zero_is_the_plain_run(digits, tmp_path):
    train, valid = digits
    plain, averaged = small_nade(), small_nade()
    a = fit(plain, train, valid, epochs=2, batch_size=64, lr=5e-3)
    b = fit(averaged, train, valid, epochs=2, batch_size=64, lr=5e-3, ema=0.0)  # the average is the weights
    assert a["valid_nll_nats"] == b["valid_nll_nats"] and b["ema"] == 0.0 and "ema" not in a
    for key, value in plain.state_dict().items():
        assert torch.equal(averaged.state_dict()[key], value), key


def test_ema_validates_and_keeps_the_averaged_weights(digits, tmp_path):
    train, valid = digits
    model = small_nade()
    out = tmp_path / "ema.safetensors"
    decay = 0.9
    metrics = fit(model, train, valid, epochs=1, batch_size=100, lr=5e-2, seed=1, out=out, ema=decay)
    live, _ = load_checkpoint(run_paths(out)[2])  # the resume state holds the trained (live) weights
    # replay the three Adam steps, moving the average after each: average <- average + (1 - decay) (weights - average)
    replay = small_nade()
    optimizer = torch.optim.Adam(replay.parameters(), lr=5e-2)
    expected = [p.detach().clone() for p in replay.parameters()]
    for batch in torch.randperm(len(train), generator=torch.Generator().manual_seed(1)).split(100):
        optimizer.zero_grad()
        (-replay.log_prob(train[batch].long()).mean()).backward()
        optimizer.step()
        expected = [e.lerp(p.detach(), 1 - decay) for e, p in zip(expected, replay.parameters())]
    for got, want, trained, replayed in zip(model.parameters(), expected, live.parameters(), replay.parameters()):
        torch.testing.assert_close(got.detach(), want, atol=1e-6, rtol=0)
        torch.testing.assert_close(trained.detach(), replayed.detach(), atol=1e-6, rtol=0)
        assert not torch.equal(got.detach(), trained.detach())  # the average is not the trained weights
    assert metrics["valid_nll_nats"] == pytest.approx(evaluate(model, valid)["nll_nats"], abs=1e-6)
    saved, info = load_checkpoint(out)
    assert info.metrics["ema"] == decay
    for key, value in model.state_dict().items():
        assert torch.equal(saved.state_dict()[key], value), key


def test_resume_continues_the_moving_average(digits, tmp_path):
    train, valid = digits
    options = dict(batch_size=64, lr=5e-3, seed=3, ema=0.95)
    whole = small_nade()
    fit(whole, train, valid, epochs=3, out=tmp_path / "whole.safetensors", **options)
    part = small_nade()
    fit(part, train, valid, epochs=1, out=tmp_path / "part.safetensors", **options)
    resumed = small_nade(seed=99)
    metrics = fit(resumed, train, valid, epochs=3, out=tmp_path / "part.safetensors", resume=True)  # ema inherited
    assert metrics["ema"] == 0.95
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=1e-6, rtol=0)
    # a run trained without averaging continues with it: the average starts from the resumed weights
    plain = tmp_path / "plain.safetensors"
    fit(small_nade(), train, valid, epochs=1, out=plain, batch_size=64)
    later = fit(small_nade(seed=5), train, valid, epochs=2, out=plain, resume=True, ema=0.9)
    assert later["ema"] == 0.9 and later["epochs"] == 2
    with safe_open(str(run_paths(plain)[2]), framework="pt") as handle:
        assert "extra.ema.0" in set(handle.keys())


def test_ema_out_of_range_is_refused(digits, tmp_path):
    train, valid = digits
    with pytest.raises(ConfigError, match=r"ema must be a number in \[0, 1\), got 1.0"):
        fit(small_nade(), train, valid, epochs=1, ema=1.0)
    result = CliRunner().invoke(cli, ["train", "nade", "--dataset", "digits", "--out", str(tmp_path / "x.safetensors"),
                                      "--ema", "1"])
    assert result.exit_code == 2 and "--ema" in result.output and not (tmp_path / "x.safetensors").exists()


def test_resume_state_is_safetensors_with_adam_state(digits, tmp_path):
    train, valid = digits
    out = tmp_path / "run.safetensors"
    fit(small_nade(), train, valid, epochs=1, out=out)
    last = run_paths(out)[2]
    with safe_open(str(last), framework="pt") as handle:
        keys = set(handle.keys())
        extra = json.loads(handle.metadata()["extra"])
    assert {"extra.optim.0.exp_avg", "extra.optim.0.exp_avg_sq", "extra.optim.0.step", "extra.rng.torch"} <= keys
    assert extra["resume"]["epoch"] == 1
    load_checkpoint(last)  # the resume state is itself a loadable checkpoint
    assert not any(p.suffix in (".pt", ".pkl") for p in tmp_path.iterdir())


def test_max_minutes_stops_after_the_epoch_that_crosses_it(digits):
    train, valid = digits
    metrics = fit(small_nade(), train, valid, epochs=5, max_minutes=1e-6)
    assert metrics["epochs"] == 1 and metrics["stopped"] == "max_minutes"


def test_option_errors(digits, tmp_path):
    train, valid = digits
    with pytest.raises(ConfigError, match="unknown training options"):
        fit(small_nade(), train, valid, epochz=3)
    with pytest.raises(ConfigError, match="lr_decay"):
        fit(small_nade(), train, valid, lr_decay=1.5)
    with pytest.raises(ConfigError, match="resume needs out"):
        fit(small_nade(), train, valid, resume=True)
    with pytest.raises(CheckpointError, match="no resume state"):
        fit(small_nade(), train, valid, resume=True, out=tmp_path / "none.safetensors")
    with pytest.raises(ConfigError, match="closed form"):
        fit(create_model("markov", (1, 8, 8)), train, valid, epochs=2)
    fit(small_nade(hidden=16), train, valid, epochs=1, out=tmp_path / "a.safetensors")
    with pytest.raises(ConfigError, match="cannot resume"):
        fit(small_nade(hidden=8), train, valid, epochs=2, out=tmp_path / "a.safetensors", resume=True)


KILL_SCRIPT = """
import sys, torch
from densreg.registry import create_model, load_split
from densreg.app.training import fit
torch.manual_seed(0)
model = create_model("nade", (1, 8, 8), 2, hidden=16)
fit(model, load_split("digits", "train")[:200], load_split("digits", "valid")[:50], epochs=100000,
    batch_size=20, patience=100000, out=sys.argv[1])
"""


def test_sigkill_leaves_the_last_checkpoint_loadable(tmp_path, digits):
    out = tmp_path / "run.safetensors"
    _, log, last = run_paths(out)
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out)])
    try:
        deadline = time.time() + 60
        while not last.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert last.exists(), "no epoch finished in time"
        time.sleep(0.37)  # then kill at an arbitrary moment, likely mid-epoch or mid-write
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    model, info = load_checkpoint(out)
    load_checkpoint(last)
    assert json.loads(log.read_text().splitlines()[-1])["epoch"] >= 1
    train, valid = digits
    resumed = create_model("nade", (1, 8, 8), 2, hidden=16)
    done = json.loads(safe_open(str(last), framework="pt").metadata()["extra"])["resume"]["epoch"]
    metrics = fit(resumed, train[:200], valid[:50], epochs=done + 1, batch_size=20, patience=100000, out=out,
                  resume=True)
    assert metrics["epochs"] == done + 1


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def test_cli_train_options_and_errors(tmp_path):
    out = tmp_path / "d.safetensors"
    result = run("train", "nade", "--dataset", "digits", "--out", out, "--set", "hidden=8", "--epochs", 2,
                 "--batch-size", 200, "--lr", 0.01, "--lr-decay", 0.9, "--patience", 3, "--clip-grad", 10,
                 "--weight-decay", 0, "--device", "cpu", "--max-minutes", 5)
    assert result.exit_code == 0, result.output
    model, info = load_checkpoint(out)
    assert info.metrics["epochs"] == 2 and info.metrics["dataset"] == "digits"
    assert len(run_paths(out)[1].read_text().splitlines()) == 2
    # a line per epoch on stderr even without a terminal (a nohup log shows progress); stdout stays clean
    assert re.search(r"^epoch 2: train [0-9.]+ valid [0-9.]+ nats", result.stderr, re.M), result.stderr
    assert "epoch 1:" not in result.stdout
    # --set not given again: the interrupted run's model settings (hidden=8, not the default 500)
    result = run("train", "nade", "--dataset", "digits", "--out", out, "--epochs", 3, "--resume")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(out)[0].config()["hidden"] == 8
    log = [json.loads(x) for x in run_paths(out)[1].read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3]
    assert [e["lr"] for e in log] == pytest.approx([0.01, 0.009, 0.0081])  # --lr, --lr-decay kept

    result = run("train", "markov", "--dataset", "digits", "--out", tmp_path / "m.safetensors", "--epochs", 3)
    assert result.exit_code == 1 and "closed form" in result.output and "--epochs" in result.output
    result = run("train", "nade", "--dataset", "digits", "--out", tmp_path / "new.safetensors", "--resume")
    assert result.exit_code == 1 and "no resume state" in result.output
    result = run("train", "nade", "--dataset", "digits", "--out", out, "--lr", "-1")
    assert result.exit_code == 2 and "--lr" in result.output
    result = run("train", "nade", "--dataset", "digits", "--out", out, "--set", "hidden=4", "--resume")
    assert result.exit_code == 1 and "cannot resume" in result.output


def test_training_options_are_one_typed_object_whose_defaults_the_cli_shows():
    defaults = training.TrainingOptions()
    help_text = " ".join(run("train", "--help").output.split())
    for flag, value in (("--epochs", defaults.epochs), ("--batch-size", defaults.batch_size),
                        ("--lr", defaults.lr), ("--lr-decay", defaults.lr_decay), ("--patience", defaults.patience)):
        assert re.search(rf"{flag} \S+ RANGE .*?\[default: {value};", help_text), flag
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        defaults.replace(batch_size=0)
    with pytest.raises(ConfigError, match="unknown training options: epochz"):
        defaults.replace(epochz=1)
    paths = run_paths("runs/m.safetensors")
    assert paths.log.name == "m.log.jsonl" and paths.state.name == "m.last.safetensors"
    assert paths.checkpoint.name == "m.safetensors"


def test_fit_is_the_one_writer_of_the_checkpoint(digits, tmp_path):
    train, valid = digits
    out = tmp_path / "markov.safetensors"
    metrics = fit(create_model("markov", (1, 8, 8)), train, valid, out=out, metrics={"dataset": "digits"})
    model, info = load_checkpoint(out)
    assert info.metrics["dataset"] == "digits" and info.metrics["valid_nll_nats"] == metrics["valid_nll_nats"]
    assert abs(evaluate(model, valid)["nll_nats"] - metrics["valid_nll_nats"]) < 1e-9
    # --seed is an option of every model (initial weights), so a counting model accepts it
    result = run("train", "markov", "--dataset", "digits", "--out", tmp_path / "s.safetensors", "--seed", 3)
    assert result.exit_code == 0, result.output


def test_cli_seed_reaches_initial_weights_and_shuffling(tmp_path):
    """`train --seed S` is torch.manual_seed(S) before the model is built, then fit(seed=S): the
    API run doing both reproduces it exactly; the one shuffling with another seed does not."""
    out = tmp_path / "cli.safetensors"
    result = run("train", "nade", "--dataset", "digits", "--out", out, "--set", "hidden=4", "--epochs", 1,
                 "--seed", 1)
    assert result.exit_code == 0, result.output
    cli_weights = load_checkpoint(out)[0].state_dict()
    train, valid = load_split("digits", "train"), load_split("digits", "valid")

    def api_run(shuffle_seed):
        torch.manual_seed(1)
        model = create_model("nade", (1, 8, 8), 2, hidden=4)
        fit(model, train, valid, epochs=1, seed=shuffle_seed, out=tmp_path / f"api{shuffle_seed}.safetensors")
        return model.state_dict()

    same, other_shuffle = api_run(1), api_run(0)
    assert all(torch.equal(cli_weights[k], same[k]) for k in same)
    assert not torch.equal(cli_weights["W"], other_shuffle["W"])


def test_seed_alone_changes_the_shuffling_order(digits):
    train, valid = digits
    runs = [fit(small_nade(seed=0), train, valid, epochs=1, batch_size=50, seed=s) for s in (0, 0, 1)]
    assert runs[0]["train_nll_nats"] == runs[1]["train_nll_nats"] != runs[2]["train_nll_nats"]
