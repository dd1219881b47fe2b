"""Trainer: run folder, determinism, resume, divergence, momentum buffers, CLI."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from landscape.checkpoint import load_checkpoint
from landscape.cli import main
from landscape.config import ConfigError, TrainConfig
from landscape.trainer import TrainingError, lr_factor, train


def _cfg(tmp_path, name="run", **kw):
    base = dict(dataset="synthetic", dataset_kwargs={"num_samples": 96, "input_shape": [6]},
                model="mlp", model_kwargs={"width": 8}, epochs=2, batch_size=32, lr=0.05,
                out=str(tmp_path / name))
    base.update(kw)
    return TrainConfig(**base)


def _states_equal(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_run_folder_metrics_and_momentum(tmp_path):
    run = train(_cfg(tmp_path, epochs=3, save_every=2), progress=False)
    names = sorted(p.name for p in run.iterdir())
    assert names == ["epoch_0002.pt", "epoch_0003.pt", "last.pt", "run.json"]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and [h["epoch"] for h in info["history"]] == [1, 2, 3]
    assert set(info["history"][0]) >= {"train_loss", "train_acc", "test_loss", "test_acc", "lr"}
    ck = load_checkpoint(run / "last.pt")
    assert ck.epoch == 3 and ck.step == 9 and ck.config["model"] == "mlp"
    mom = ck.momentum()
    assert set(mom) == {n for n, _ in ck.model.named_parameters()}
    assert all(v.abs().sum() > 0 for v in mom.values())


def test_same_seed_bit_identical_and_global_rng_untouched(tmp_path):
    state = torch.get_rng_state()
    a = train(_cfg(tmp_path, "a", seed=3), progress=False)
    assert torch.equal(state, torch.get_rng_state())
    b = train(_cfg(tmp_path, "b", seed=3), progress=False)
    c = train(_cfg(tmp_path, "c", seed=4), progress=False)
    ca, cb, cc = (load_checkpoint(r / "last.pt") for r in (a, b, c))
    assert _states_equal(ca, cb)
    assert not _states_equal(ca, cc)


def test_resume_equals_uninterrupted(tmp_path):
    kw = dict(epochs=4, model_kwargs={"width": 8, "norm": "batch"}, augment=False)
    full = train(_cfg(tmp_path, "full", **kw), progress=False)
    # a run killed after epoch 2 holds exactly that epoch's state as last.pt
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(full / "epoch_0002.pt", part / "last.pt")
    shutil.copy(full / "run.json", part / "run.json")
    part = train(_cfg(tmp_path, "part", **kw), progress=False)
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(part / "last.pt")
    assert _states_equal(a, b)
    for k, v in a.momentum().items():
        assert torch.equal(v, b.momentum()[k])
    hist = json.loads((part / "run.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]


def test_resume_refuses_changed_config_and_existing_run_without_resume(tmp_path):
    train(_cfg(tmp_path), progress=False)
    with pytest.raises(TrainingError, match="lr"):
        train(_cfg(tmp_path, lr=0.5), progress=False)
    with pytest.raises(TrainingError, match="already holds a run"):
        train(_cfg(tmp_path, resume=False), progress=False)


def test_divergence_stops_keeps_last_good(tmp_path):
    cfg = _cfg(tmp_path, epochs=1)
    run = train(cfg, progress=False)
    good = load_checkpoint(run / "last.pt")
    with pytest.raises(TrainingError, match="loss became"):
        train(_cfg(tmp_path, epochs=3, lr=1e30, schedule="constant", out=str(tmp_path / "div")), progress=False)
    info = json.loads((tmp_path / "div" / "run.json").read_text())
    assert info["status"] == "diverged" and "loss became" in info["error"]
    # the good run is untouched
    assert _states_equal(good, load_checkpoint(run / "last.pt"))


def test_divergence_after_good_epoch_keeps_it(tmp_path, monkeypatch):
    import landscape.optim

    real = landscape.optim.train_step
    calls = {"n": 0}

    def exploding(model, opt, x, y, loss_fn):
        calls["n"] += 1
        loss, logits = real(model, opt, x, y, loss_fn)
        if calls["n"] > 4:  # epoch 2 (3 steps per epoch) goes bad
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
            return torch.tensor(float("nan")), logits
        return loss, logits

    monkeypatch.setattr(landscape.optim, "train_step", exploding)
    with pytest.raises(TrainingError, match="epoch 2"):
        train(_cfg(tmp_path, "w", epochs=3), progress=False)
    w = load_checkpoint(tmp_path / "w" / "last.pt")
    assert w.epoch == 1
    assert all(torch.isfinite(p).all() for p in w.model.parameters())
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["epoch_0001.pt", "last.pt", "run.json"]


def test_lr_schedule():
    cfg = TrainConfig(epochs=10, warmup_epochs=2)
    f = [lr_factor(cfg, s, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.05) and f[19] == pytest.approx(1.0)
    assert f[20] == pytest.approx(1.0) and f[-1] < 0.01
    assert all(a >= b for a, b in zip(f[20:], f[21:]))


def test_adamw_and_label_smoothing(tmp_path):
    run = train(_cfg(tmp_path, optimizer="adamw", lr=1e-3, label_smoothing=0.1), progress=False)
    ck = load_checkpoint(run / "last.pt")
    assert "exp_avg" in next(iter(ck.optimizer_state["state"].values()))
    assert set(ck.momentum()) == {n for n, _ in ck.model.named_parameters()}


def test_inferred_shapes_just_work(tmp_path):
    run = train(TrainConfig(dataset="synthetic", model="mlp", epochs=1, out=str(tmp_path / "r")), progress=False)
    ck = load_checkpoint(run / "last.pt")
    assert ck.model_spec["kwargs"]["num_classes"] == 10


def test_bad_options():
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        TrainConfig.from_dict({"lrr": 0.1})
    with pytest.raises(ValueError, match="accepted"):
        train(TrainConfig(dataset="mnist2d", out="/nonexistent/x"), progress=False)


def test_cli_train_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["train", "--dataset", "synthetic", "--dataset-kwargs", "num_samples=64", "input_shape=[5]",
               "--model", "mlp", "--model-kwargs", "width=4", "--epochs", "1", "--batch-size", "32",
               "--out", str(out)])
    assert rc == 0 and (out / "last.pt").exists()
    assert "test acc" in capsys.readouterr().out
    assert main(["train", "--model", "mlp", "--rho", "0.1", "--out", str(tmp_path / "x")]) == 2
    assert "--rho" in capsys.readouterr().err
    assert main(["train", "--dataset", "synthetic", "--model", "mlpp", "--epochs", "1", "--out", str(tmp_path / "y")]) == 2
    assert "unknown model 'mlpp'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--optimizer", "sgdx"])


def test_cli_toml_config_strict(tmp_path, capsys):
    p = tmp_path / "c.toml"
    p.write_text('model = "mlp"\nepoch = 1\n')
    assert main(["train", "--config", str(p)]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


def test_sam_family_runs_store_options_and_momentum(tmp_path):
    from landscape.config import SAMConfig

    # 96 samples, batch 32 with m=16 -> every batch splits; 100 samples would leave a short batch
    run = train(_cfg(tmp_path, "samon", dataset_kwargs={"num_samples": 100, "input_shape": [6]},
                     model_kwargs={"width": 8, "norm": "batch"},
                     sam=SAMConfig(rho=0.5, mask="norm", m=16)), progress=False)
    ck = load_checkpoint(run / "last.pt")
    assert ck.config["sam"]["mask"] == "norm" and ck.config["sam"]["m"] == 16
    assert ck.step == 2 * (100 // 32)  # the short last batch is dropped under m-sharpness
    assert set(ck.momentum()) == {n for n, _ in ck.model.named_parameters()}
    with pytest.raises(ConfigError, match="must divide batch_size"):
        _cfg(tmp_path, sam=SAMConfig(m=5))


def test_msam_run_without_explicit_options(tmp_path):
    run = train(_cfg(tmp_path, "msam", optimizer="msam", model_kwargs={"width": 8, "norm": "batch"}), progress=False)
    ck = load_checkpoint(run / "last.pt")
    # optimizer="msam" is the earlier spelling: stored as MSAM (its defaults) on SGD
    assert ck.config["optimizer"] == "sgd" and ck.config["msam"] == {"rho": 3.0, "warmup_no_rho": False,
                                                                     "recalibrate_bn": True}
    assert ck.optimizer_spec["name"] == "msam"
    mom = ck.momentum()
    assert all(torch.isfinite(v).all() for v in mom.values())


def test_nesterov_and_threads_options_take_effect(tmp_path):
    before = torch.get_num_threads()
    plain = load_checkpoint(train(_cfg(tmp_path, "plain"), progress=False) / "last.pt")
    nest = load_checkpoint(train(_cfg(tmp_path, "nest", nesterov=True, threads=before + 1), progress=False) / "last.pt")
    assert nest.optimizer_state["param_groups"][0]["nesterov"] is True
    assert not _states_equal(plain, nest)
    assert torch.get_num_threads() == before  # restored for the caller


def test_cli_flags_map_onto_train_config(tmp_path):
    from landscape.cli import build_parser, train_config_from_args

    def cfg(*argv):
        return train_config_from_args(build_parser().parse_args(["train", *argv]))

    c = cfg("--sam", "asam-el-linf", "--rho", "0.2", "--mask", "blocks", "--blocks", "B2+B3", "--m", "16",
            "--eta", "0.1", "--no-freeze-bn-stats", "--nesterov", "--augment", "--data-root", str(tmp_path),
            "--schedule", "constant", "--warmup-epochs", "1", "--label-smoothing", "0.1", "--threads", "2")
    assert (c.sam.variant, c.sam.rho, c.sam.mask, c.sam.blocks, c.sam.m, c.sam.eta, c.sam.freeze_bn_stats) == (
        "asam-el-linf", 0.2, "blocks", "B2+B3", 16, 0.1, False)
    assert c.nesterov and c.augment and c.data_root == str(tmp_path) and c.schedule == "constant"
    assert (c.warmup_epochs, c.label_smoothing, c.threads) == (1.0, 0.1, 2)
    m = cfg("--optimizer", "msam", "--base-optimizer", "adamw", "--rho", "0.5", "--no-recalibrate-bn", "--warmup-no-rho")
    # the earlier spelling, stored in today's form: MSAM on optimizer=adamw
    assert (m.optimizer, m.msam.rho, m.msam.recalibrate_bn, m.msam.warmup_no_rho) == ("adamw", 0.5, False, True)
    t = tmp_path / "c.toml"
    t.write_text('epochs = 3\n[sam]\nrho = 0.3\nmask = "norm"\n')
    c = cfg("--config", str(t), "--rho", "0.4")
    assert c.epochs == 3 and c.sam.rho == 0.4 and c.sam.mask == "norm"


def test_every_train_config_field_has_a_flag_with_help():
    import dataclasses

    from landscape.cli import build_parser
    from landscape.config import MSAMConfig, SAMConfig

    parser = build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    by_dest = {a.dest: a for a in train_parser._actions}
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("sam", "msam"):
            continue
        assert f.name in by_dest and f"--{f.name.replace('_', '-')}" in by_dest[f.name].option_strings, f.name
        assert by_dest[f.name].help, f.name
    for table, cls in (("sam", SAMConfig), ("msam", MSAMConfig)):
        for f in dataclasses.fields(cls):
            action = by_dest[f"{table}.{f.name}"]
            assert f"--{table}-{f.name.replace('_', '-')}" in action.option_strings and action.help
    assert "--sam" in by_dest["sam.variant"].option_strings and "--msam" in by_dest["msam.on"].option_strings
    for short in ("--rho", "--mask", "--blocks", "--m", "--eta", "--mask-seed", "--freeze-bn-stats",
                  "--recalibrate-bn", "--warmup-no-rho"):
        assert short in train_parser._option_string_actions, short


def test_derived_flags_new_options_and_table_switches(tmp_path):
    from landscape.cli import build_parser, train_config_from_args

    def cfg(*argv):
        return train_config_from_args(build_parser().parse_args(["train", *argv]))

    c = cfg("--precision", "bf16", "--channels-last", "--compile", "--save-every-steps", "3",
            "--diagnostics-every", "2", "--ddp-perturbation", "global", "--sync-bn", "--betas", "0.8", "0.9",
            "--seed", "7", "--no-resume", "--device", "cpu")
    assert (c.precision, c.channels_last, c.compile, c.save_every_steps, c.diagnostics_every) == ("bf16", True, True, 3, 2)
    assert (c.ddp_perturbation, c.sync_bn, c.betas, c.seed, c.resume, c.device) == ("global", True, (0.8, 0.9), 7, False, "cpu")
    assert cfg("--msam").msam.rho == 3.0 and cfg("--msam").optimizer == "sgd"
    m = cfg("--msam-rho", "0.3", "--optimizer", "adamw")  # a table flag switches its optimizer on
    assert (m.optimizer, m.msam.rho, m.sam) == ("adamw", 0.3, None)
    assert cfg("--msam", "--rho", "0.2").msam.rho == 0.2
    s = cfg("--sam-rho", "0.1", "--sam-mask", "norm")
    assert (s.sam.variant, s.sam.rho, s.sam.mask) == ("sam", 0.1, "norm")
    t = tmp_path / "c.toml"
    t.write_text('optimizer = "msam"\nmodel_kwargs = {width = 4}\n')
    c = cfg("--config", str(t), "--rho", "0.7", "--model-kwargs", "depth=2")
    assert c.msam.rho == 0.7 and c.model_kwargs == {"width": 4, "depth": 2}
    with pytest.raises(ConfigError, match="--mask do not apply to msam"):
        cfg("--msam", "--mask", "norm")
    with pytest.raises(ConfigError, match="not both"):
        cfg("--sam", "sam", "--msam")


def test_one_exit_status_rule(tmp_path, capsys):
    from landscape import cli_analyze
    from landscape.checkpoint import CheckpointError
    from landscape.cli import exit_status

    assert exit_status(ConfigError("x")) == exit_status(CheckpointError("x")) == exit_status(OSError("x")) == 2
    assert exit_status(TrainingError("x")) == 1 and exit_status(KeyError("x")) is None
    # a diverging run: the work failed -> 1
    argv = ["train", "--dataset", "synthetic", "--dataset-kwargs", "num_samples=32", "input_shape=[4]",
            "--model", "mlp", "--epochs", "1", "--batch-size", "16", "--lr", "1e30", "--schedule", "constant"]
    assert main(argv + ["--out", str(tmp_path / "div")]) == 1
    assert "loss became" in capsys.readouterr().err
    # bad input -> 2, the same rule through the analyze entry point
    assert main(["train", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "no such config file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_analyze.main(["analyze", str(tmp_path), "-a", "norm_params", "--config", str(tmp_path / "no.toml")])
    assert e.value.code == 2 and "no such config file" in capsys.readouterr().err


def test_demo_does_not_import_the_cli():
    import ast
    import inspect

    import landscape.demo

    tree = ast.parse(inspect.getsource(landscape.demo))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "landscape.cli" not in imported


# ---- precision, memory format, compilation, dense checkpoints, diagnostics ------------------------


def _dtypes_seen(model):
    seen = set()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype))
    return seen


def test_bf16_autocast_on_cpu_plain_and_sam(tmp_path, monkeypatch):
    import landscape.trainer
    from landscape.config import SAMConfig

    real_build = landscape.trainer.build_model
    hooks: list = []  # per run: the output dtypes of its Linear layers

    def build_and_watch(*a, **kw):
        model = real_build(*a, **kw)
        hooks.append(_dtypes_seen(model))
        return model

    monkeypatch.setattr(landscape.trainer, "build_model", build_and_watch)
    ref = load_checkpoint(train(_cfg(tmp_path, "fp32"), progress=False) / "last.pt")
    for name, extra in (("bf16", {}), ("bf16-sam", {"sam": SAMConfig(rho=0.05)})):
        run = train(_cfg(tmp_path, name, precision="bf16", **extra), progress=False)
        assert torch.bfloat16 in hooks[-1]  # the forward ran under autocast
        ck = load_checkpoint(run / "last.pt")
        assert ck.config["precision"] == "bf16"
        assert all(p.dtype == torch.float32 for p in ck.model.parameters())  # master weights stay fp32
        if not extra:
            for (k, a), b in zip(ref.model.state_dict().items(), ck.model.state_dict().values()):
                assert torch.allclose(a, b, atol=0.05), k  # bf16 rounding, not another run
    assert hooks[0] == {torch.float32}


def test_fp16_grad_scaler_plain_step_and_skipped_inf_step():
    from landscape.optim import train_step

    torch.manual_seed(0)
    # tanh, not ReLU: fp16 rounding may flip a ReLU near 0, a discrete change of the gradient
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    ref = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    autocast = lambda: torch.autocast("cpu", dtype=torch.float16)  # noqa: E731
    hook = model[0].weight.register_hook(lambda g: g * float("inf"))
    loss, _ = train_step(model, opt, x, y, torch.nn.functional.cross_entropy, autocast=autocast, scaler=scaler)
    assert torch.isfinite(loss)
    assert all(torch.equal(p, r) for p, r in zip(model.parameters(), ref))  # the step was skipped
    assert scaler.get_scale() == 2.0**9 and not opt.state  # scale halved, no momentum yet
    hook.remove()
    train_step(model, opt, x, y, torch.nn.functional.cross_entropy, autocast=autocast, scaler=scaler)
    fp32 = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        for p, r in zip(fp32.parameters(), ref):
            p.copy_(r)
    train_step(fp32, torch.optim.SGD(fp32.parameters(), lr=0.1, momentum=0.9), x, y, torch.nn.functional.cross_entropy)
    for p, q in zip(model.parameters(), fp32.parameters()):
        # steps of ~1e-2, fp16 rounding of ~1e-5: the same step, in half precision
        assert not torch.equal(p, q) and torch.allclose(p, q, atol=1e-4)


def test_fp16_run_records_precision_and_resumes_exactly(tmp_path):
    run = train(_cfg(tmp_path, precision="fp16", epochs=3), progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["config"]["precision"] == "fp16" and all(math.isfinite(h["train_loss"]) for h in info["history"])
    ck = load_checkpoint(run / "epoch_0002.pt")
    assert ck.raw["rng"]["grad_scaler"]["scale"] > 0  # the loss scale travels with the checkpoint
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(run / "epoch_0002.pt", part / "last.pt")
    resumed = train(_cfg(tmp_path, "part", precision="fp16", epochs=3), progress=False)
    assert _states_equal(load_checkpoint(run / "last.pt"), load_checkpoint(resumed / "last.pt"))


def test_channels_last_refused_on_cpu_and_for_non_images(tmp_path):
    with pytest.raises(ConfigError, match="channels_last=True needs a CUDA device"):
        train(_cfg(tmp_path, "cpu", channels_last=True, device="cpu",
                   dataset_kwargs={"num_samples": 32, "input_shape": [3, 8, 8]}), progress=False)
    if torch.cuda.is_available():
        with pytest.raises(ConfigError, match="channels_last=True needs image inputs"):
            train(_cfg(tmp_path, "mlp", channels_last=True, device="cuda"), progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="channels_last is a CUDA option")
def test_channels_last_same_result_on_cuda(tmp_path):
    kw = dict(dataset_kwargs={"num_samples": 64, "input_shape": [3, 8, 8], "num_classes": 3}, model="resnet_cifar",
              model_kwargs={"depth": 8, "width": 8}, batch_size=16, device="cuda")
    torch.backends.cudnn.allow_tf32 = False
    a = load_checkpoint(train(_cfg(tmp_path, "nchw", **kw), progress=False) / "last.pt")
    b = load_checkpoint(train(_cfg(tmp_path, "nhwc", channels_last=True, **kw), progress=False) / "last.pt")
    assert b.config["channels_last"] is True
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(va.float(), vb.float(), atol=1e-3), k


def test_compile_is_checked_against_eager_on_the_first_batch(tmp_path, monkeypatch, caplog):
    import logging

    import landscape.trainer

    class Wrong(torch.nn.Module):  # a "compiled" model that computes something else
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x) * 2.0

    monkeypatch.setattr(landscape.trainer.torch, "compile", lambda net: Wrong(net))
    with pytest.raises(TrainingError, match="compiled model's loss on the first batch"):
        train(_cfg(tmp_path, "wrong", compile=True, model_kwargs={"width": 8, "norm": "batch"}), progress=False)
    class Broken(torch.nn.Module):  # a backend that cannot compile this model
        def forward(self, x):
            raise RuntimeError("no C++ compiler found\nmore lines")

    monkeypatch.setattr(landscape.trainer.torch, "compile", lambda net: Broken())
    with pytest.raises(TrainingError, match=r"torch.compile failed on the first batch \(RuntimeError: no C\+\+ compiler found\)"):
        train(_cfg(tmp_path, "broken", compile=True), progress=False)
    assert json.loads((tmp_path / "broken" / "run.json").read_text())["status"] == "failed"
    monkeypatch.setattr(landscape.trainer.torch, "compile", lambda net: net)
    with caplog.at_level(logging.INFO, logger="landscape"):
        run = train(_cfg(tmp_path, "same", compile=True, model_kwargs={"width": 8, "norm": "batch"}), progress=False)
    assert "matches eager" in caplog.text
    plain = train(_cfg(tmp_path, "plain", model_kwargs={"width": 8, "norm": "batch"}), progress=False)
    # the check leaves no trace: BatchNorm statistics and weights as without it
    assert _states_equal(load_checkpoint(run / "last.pt"), load_checkpoint(plain / "last.pt"))


@pytest.mark.slow
def test_torch_compile_real(tmp_path):
    run = train(_cfg(tmp_path, compile=True, epochs=1), progress=False)
    assert load_checkpoint(run / "last.pt").config["compile"] is True


def test_save_every_steps_dense_checkpoints(tmp_path):
    run = train(_cfg(tmp_path, epochs=2, save_every_steps=2), progress=False)  # 3 steps per epoch
    steps = sorted(p.name for p in run.glob("step_*.pt"))
    assert steps == ["step_00000002.pt", "step_00000004.pt", "step_00000006.pt"]
    ck = load_checkpoint(run / "step_00000004.pt")
    assert (ck.step, ck.epoch) == (4, 1) and set(ck.metrics) == {"train_loss", "lr"}
    assert set(ck.momentum()) == {n for n, _ in ck.model.named_parameters()}
    final = load_checkpoint(run / "step_00000006.pt")
    assert _states_equal(final, load_checkpoint(run / "last.pt"))


def test_diagnostics_every_records_optimizer_stats(tmp_path, monkeypatch):
    from landscape.config import SAMConfig

    # SAM's own last_stats (landscape.optim.SAM.train_step), every 2nd step
    run = train(_cfg(tmp_path, epochs=2, diagnostics_every=2, sam=SAMConfig(rho=0.05)), progress=False)
    diag = json.loads((run / "run.json").read_text())["diagnostics"]
    assert [d["step"] for d in diag] == [2, 4, 6] and [d["epoch"] for d in diag] == [1, 2, 2]
    for d in diag:
        assert d["eps_norm"] == pytest.approx(0.05, rel=1e-5) and -1 <= d["grad_cosine"] <= 1  # ||e|| = rho
        assert d["sharpness"] == pytest.approx(d["loss_perturbed"] - d["loss"]) and d["skipped"] == 0
    # plain SGD (no last_stats): the step loss and lr only
    monkeypatch.undo()
    run = train(_cfg(tmp_path, "sgd", epochs=1, diagnostics_every=3), progress=False)
    assert [set(d) for d in json.loads((run / "run.json").read_text())["diagnostics"]] == [{"epoch", "step", "lr", "loss"}]


def test_msam_diagnostics_have_no_sharpness_difference(tmp_path, monkeypatch):
    import landscape.optim

    real = landscape.optim.train_step

    def with_stats(model, opt, x, y, loss_fn, **kw):
        loss, logits = real(model, opt, x, y, loss_fn, **kw)
        opt.last_stats = {"momentum_cosine": torch.tensor(0.5), "loss_perturbed": loss}
        return loss, logits

    monkeypatch.setattr(landscape.optim, "train_step", with_stats)
    run = train(_cfg(tmp_path, epochs=1, diagnostics_every=1, optimizer="msam"), progress=False)
    diag = json.loads((run / "run.json").read_text())["diagnostics"]
    assert len(diag) == 3 and all(d["momentum_cosine"] == 0.5 and "sharpness" not in d for d in diag)
