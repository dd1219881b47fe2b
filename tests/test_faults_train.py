"""Training under bad input and faults (issue 10 items 7, 9, 10, 12, 13): every bad value or file
is a message naming it with exit status 2, never a traceback; killed runs resume with every epoch;
checkpoint bytes depend only on config, seed and data."""

from __future__ import annotations

import io
import json
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape.cli import main
from landscape.config import ConfigError, SAMConfig, TrainConfig
from landscape.trainer import train

TINY = ['dataset = "synthetic"', 'model = "mlp"', "epochs = 1", "batch_size = 16",
        "dataset_kwargs = {num_samples = 32, input_shape = [4]}", "model_kwargs = {width = 4}"]


def _toml(tmp_path, *lines, base=TINY):
    p = tmp_path / "c.toml"
    keys = {line.split("=")[0].strip() for line in lines if "=" in line and not line.startswith("[")}
    top = [b for b in base if b.split("=")[0].strip() not in keys]
    tables = [line for line in lines if line.startswith("[")]
    first_table = lines.index(tables[0]) if tables else len(lines)
    p.write_text("\n".join(top + list(lines[:first_table]) + list(lines[first_table:])) + "\n")
    return p


def _train_rc(tmp_path, capsys, *lines, extra=()):
    rc = main(["train", "--config", str(_toml(tmp_path, *lines)), "--out", str(tmp_path / "run"), *extra])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("line, words", [
    ('epochs = "ten"', ["TrainConfig.epochs='ten'", "an integer"]),
    ("epochs = 1.5", ["TrainConfig.epochs=1.5", "an integer"]),
    ('lr = "0.1"', ["TrainConfig.lr='0.1'", "a number"]),
    ('sam = "sam"', ["TrainConfig.sam='sam'", "a SAMConfig table"]),
    ("betas = [0.9]", ["TrainConfig.betas=[0.9]", "a list of 2 values"]),
    ('resume = "no"', ["TrainConfig.resume='no'", "true or false"]),
    ('augment = "yes"', ["TrainConfig.augment='yes'", "true or false"]),
    ("seed = 100000000000000000000000", ["TrainConfig.seed must be in [0, 2**63)", "100000000000000000000000"]),
    ("seed = -1", ["TrainConfig.seed must be in [0, 2**63)"]),
    ("threads = true", ["TrainConfig.threads=True", "an integer or None"]),
    ('precision = "fp8"', ["TrainConfig.precision='fp8'", "'fp32', 'bf16', 'fp16'"]),
    ('dataset_kwargs = {num_samples = 100000000000, input_shape = [4]}', ["num_samples", "100000000000"]),
    ('dataset_kwargs = {num_samples = -4, input_shape = [4]}', ["num_samples", "-4"]),
])
def test_bad_values_are_messages_with_exit_2(tmp_path, capsys, line, words):
    rc, err = _train_rc(tmp_path, capsys, line)
    assert rc == 2, err
    assert err.startswith("landscape train: error:") and "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_bad_nested_value_and_mnist1d_size(tmp_path, capsys):
    rc, err = _train_rc(tmp_path, capsys, "[sam]", 'rho = "big"')
    assert rc == 2 and "SAMConfig.rho='big'" in err and "a number" in err
    rc, err = _train_rc(tmp_path, capsys, 'dataset = "mnist1d"', "dataset_kwargs = {num_samples = -4}")
    assert rc == 2 and "num_samples" in err and "-4" in err


def test_strict_types_in_every_options_class():
    from landscape.analyses.hessian import HessianOptions

    with pytest.raises(ConfigError, match=r"HessianOptions.tol='0.1' is not accepted; accepted: a number"):
        HessianOptions.from_dict({"tol": "0.1"})
    with pytest.raises(ConfigError, match="SAMConfig.freeze_bn_stats=1 is not accepted; accepted: true or false"):
        SAMConfig(freeze_bn_stats=1)
    with pytest.raises(ConfigError, match="TrainConfig.batch_size=True"):
        TrainConfig(batch_size=True)
    cfg = TrainConfig(lr=1, betas=[1, 0.5], warmup_epochs=1)  # ints widen to floats, lists become tuples
    assert (cfg.lr, cfg.betas, cfg.warmup_epochs) == (1.0, (1.0, 0.5), 1.0)
    assert type(cfg.lr) is float and TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_model_too_large_is_exit_2(tmp_path, capsys, monkeypatch):
    import landscape.trainer

    # the model registry's parameter budget raises ConfigError before allocating; any such
    # refusal (a ValueError) is reported as bad input
    def refuse(name, **kwargs):
        raise ConfigError(f"model {name!r} with width={kwargs.get('width')} has too many parameters")

    monkeypatch.setattr(landscape.trainer, "build_model", refuse)
    rc, err = _train_rc(tmp_path, capsys, "model_kwargs = {width = 1000000000}")
    assert rc == 2 and "too many parameters" in err


# ---- CIFAR files ----------------------------------------------------------------------------------


def _cifar(folder, n=2):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [1] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


@pytest.mark.parametrize("damage", ["tampered", "truncated", "empty", "missing", "bad-shape", "not-a-dict",
                                    "bad-labels"])
def test_damaged_cifar_file_is_named_exit_2(tmp_path, capsys, damage):
    folder = _cifar(tmp_path / "cifar-10-batches-py")
    f = folder / "data_batch_3"
    good = f.read_bytes()
    if damage == "tampered":
        f.write_bytes(good[:40] + bytes(b ^ 0x5A for b in good[40:80]) + good[80:])
    elif damage == "truncated":
        f.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        f.write_bytes(b"")
    elif damage == "missing":
        f.unlink()
    elif damage == "bad-shape":
        f.write_bytes(pickle.dumps({b"data": np.zeros((2, 3, 32, 32), np.uint8), b"labels": [1, 2]}))
    elif damage == "not-a-dict":
        f.write_bytes(pickle.dumps([1, 2, 3]))
    else:
        f.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [[1], [2]]}))
    rc, err = _train_rc(tmp_path, capsys, 'dataset = "cifar10"', f'data_root = "{tmp_path}"',
                        'model_kwargs = {width = 4}', "dataset_kwargs = {}")
    assert rc == 2, err
    assert "data_batch_3" in err and "Traceback" not in err


# ---- resume from damaged files --------------------------------------------------------------------


def _tiny(tmp_path, name="run", **kw):
    base = dict(dataset="synthetic", dataset_kwargs={"num_samples": 32, "input_shape": [4]}, model="mlp",
                model_kwargs={"width": 4}, epochs=2, batch_size=16, out=str(tmp_path / name))
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("damage", ["no-rng", "rng-garbage", "no-optimizer-state", "empty", "text"])
def test_resume_from_damaged_last_pt_is_named_exit_2(tmp_path, capsys, damage):
    cfg = _tiny(tmp_path, epochs=1)
    run = train(cfg, progress=False)
    last = run / "last.pt"
    obj = torch.load(last, weights_only=True)
    if damage == "no-rng":
        obj.pop("rng")
    elif damage == "rng-garbage":
        obj["rng"] = {"torch": torch.zeros(3), "data": "x"}
    elif damage == "no-optimizer-state":
        obj["optimizer_state"] = None
    if damage == "empty":
        last.write_bytes(b"")
    elif damage == "text":
        last.write_text("hello\n")
    else:
        torch.save(obj, last)
    argv = ["train", "--dataset", "synthetic", "--dataset-kwargs", "num_samples=32", "input_shape=[4]",
            "--model", "mlp", "--model-kwargs", "width=4", "--epochs", "2", "--batch-size", "16", "--out", str(run)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(last) in err and "Traceback" not in err


def test_corrupt_run_json_is_named(tmp_path, capsys):
    run = train(_tiny(tmp_path, epochs=1), progress=False)
    (run / "run.json").write_text('{"history": [{"epoch": "one"}]')  # truncated and wrong
    argv = ["train", "--dataset", "synthetic", "--dataset-kwargs", "num_samples=32", "input_shape=[4]",
            "--model", "mlp", "--model-kwargs", "width=4", "--epochs", "2", "--batch-size", "16", "--out", str(run)]
    assert main(argv) == 2
    assert str(run / "run.json") in capsys.readouterr().err
    (run / "run.json").write_text('{"history": [{"epoch": "one", "step": 2}]}')
    assert main(argv) == 2
    assert str(run / "run.json") in capsys.readouterr().err


# ---- determinism ----------------------------------------------------------------------------------


def _tensors_equal(x, y) -> bool:
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_tensors_equal(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(map(_tensors_equal, x, y))
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    return x == y


def _two_identical_runs(tmp_path):
    cfg = _tiny(tmp_path, "a", model_kwargs={"width": 4, "norm": "batch"}, sam=SAMConfig(rho=0.1), save_every_steps=1)
    first = train(cfg, progress=False)
    files = {p.name: p.read_bytes() for p in first.glob("*.pt")}
    (tmp_path / "a").rename(tmp_path / "first")
    time.sleep(0.01)
    again = train(cfg, progress=False)
    return files, {p.name: p.read_bytes() for p in again.glob("*.pt")}, again


def test_checkpoint_content_is_a_function_of_config_seed_and_data(tmp_path):
    files, again, run = _two_identical_runs(tmp_path)
    assert sorted(files) == sorted(again) and "step_00000001.pt" in files
    for name in files:
        a = torch.load(io.BytesIO(files[name]), weights_only=True)
        b = torch.load(io.BytesIO(again[name]), weights_only=True)
        assert "seconds" not in a["metrics"] and _tensors_equal(a, b), name
    info = json.loads((run / "run.json").read_text())
    assert all("seconds" in h for h in info["history"])  # timings live in run.json only


def test_checkpoint_bytes_identical_across_identical_runs(tmp_path):
    files, again, _ = _two_identical_runs(tmp_path)
    assert files == again


# ---- killed runs ----------------------------------------------------------------------------------


def test_death_right_after_last_pt_loses_no_epoch(tmp_path, monkeypatch):
    """The process dies just after last.pt of epoch 2 is written (the window where, with
    last.pt saved before run.json, run.json lacked that epoch); the resumed history has all."""
    import landscape.trainer

    cfg = _tiny(tmp_path, epochs=4)
    real = landscape.trainer.save_checkpoint

    def dies_after(path, model, **kw):
        out = real(path, model, **kw)
        if Path(path).name == "last.pt" and kw["epoch"] == 2:
            raise SystemExit("killed")
        return out

    monkeypatch.setattr(landscape.trainer, "save_checkpoint", dies_after)
    with pytest.raises(SystemExit):
        train(cfg, progress=False)
    monkeypatch.setattr(landscape.trainer, "save_checkpoint", real)
    run = train(cfg, progress=False)
    hist = json.loads((run / "run.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    full = train(_tiny(tmp_path, "full", epochs=4), progress=False)
    a, b = (torch.load(r / "last.pt", weights_only=True)["model_state"] for r in (run, full))
    assert _tensors_equal(a, b)


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(tmp_path):
    """A real `landscape train` process SIGKILLed at random moments, then resumed, repeatedly:
    the finished run equals an uninterrupted one and run.json has every epoch once."""
    import os
    import random
    import signal
    import subprocess
    import sys

    epochs = 12
    argv = [sys.executable, "-m", "landscape.cli", "train", "--dataset", "synthetic", "--dataset-kwargs",
            "num_samples=256", "input_shape=[8]", "--model", "mlp", "--model-kwargs", "width=16", "--epochs",
            str(epochs), "--batch-size", "16", "--threads", "1", "--device", "cpu", "--out", str(tmp_path / "run")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    rnd = random.Random(0)
    kills = 0
    for _ in range(12):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # wait until training runs (run.json rewritten), then kill at a random moment
        t0 = time.monotonic()
        while proc.poll() is None and not (tmp_path / "run" / "run.json").exists() and time.monotonic() - t0 < 60:
            time.sleep(0.02)
        time.sleep(rnd.uniform(0.0, 0.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    else:
        assert subprocess.run(argv, env=env, capture_output=True).returncode == 0
    assert kills >= 2
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "done" and [h["epoch"] for h in info["history"]] == list(range(1, epochs + 1))
    ref = train(TrainConfig(dataset="synthetic", dataset_kwargs={"num_samples": 256, "input_shape": [8]},
                            model="mlp", model_kwargs={"width": 16}, epochs=epochs, batch_size=16,
                            out=str(tmp_path / "ref"), device="cpu"), progress=False)
    a, b = (torch.load(r / "last.pt", weights_only=True) for r in (tmp_path / "run", ref))
    assert _tensors_equal(a["model_state"], b["model_state"])
    assert _tensors_equal(a["optimizer_state"], b["optimizer_state"])


@pytest.mark.parametrize("argv, hint", [
    (["train", "--epoch", "3"], "--epochs"),          # an abbreviation is not silently accepted
    (["train", "--learning-rate", "0.1"], None),
    (["demo", "--quik"], "--quick"),
])
def test_misspelt_or_abbreviated_flags_are_refused_with_a_suggestion(argv, hint, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized option(s)" in err and "accepted: " in err
    if hint:
        assert f"did you mean '{hint}'" in err
