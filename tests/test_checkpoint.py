"""Checkpoint format: round trip, foreign files, refusal of bad files, momentum buffers."""

from __future__ import annotations

import argparse
import os
import pathlib
import pickle

import pytest
import torch
from torch import nn

from landscape.checkpoint import (
    CheckpointError,
    find_checkpoints,
    load_checkpoint,
    save_checkpoint,
    strip_prefixes,
)
from landscape.models import build_model


def _model(**kw):
    torch.manual_seed(0)
    return build_model("resnet1d", input_shape=(40,), num_classes=10, width=4, **kw)


def _sgd_steps(model, steps=2):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 40)).square().mean().backward()
        opt.step()
    return opt


def test_round_trip_outputs_equal_and_eval_mode(tmp_path):
    m = _model()
    opt = _sgd_steps(m)
    p = save_checkpoint(tmp_path / "a.pt", m, optimizer=opt, step=7, epoch=2,
                        metrics={"test_acc": 0.5}, config={"seed": 1})
    ck = load_checkpoint(p)
    assert (ck.step, ck.epoch, ck.metrics, ck.config) == (7, 2, {"test_acc": 0.5}, {"seed": 1})
    assert not ck.model.training
    m.eval()
    x = torch.randn(5, 40)
    torch.testing.assert_close(ck.model(x), m(x), rtol=0, atol=0)
    assert ck.run == "test_round_trip_outputs_equal_0" or ck.run == tmp_path.name


def test_momentum_buffers_by_name(tmp_path):
    m = _model()
    opt = _sgd_steps(m)
    ck = load_checkpoint(save_checkpoint(tmp_path / "a.pt", m, optimizer=opt))
    mom = ck.momentum()
    assert set(mom) == {n for n, _ in m.named_parameters()}
    for (n, p) in m.named_parameters():
        torch.testing.assert_close(mom[n], opt.state[p]["momentum_buffer"])


def test_momentum_absent_is_clear_error(tmp_path):
    ck = load_checkpoint(save_checkpoint(tmp_path / "a.pt", _model()))
    with pytest.raises(CheckpointError, match="no optimizer state"):
        ck.momentum()


def test_foreign_state_dict_with_prefixes_and_spec(tmp_path):
    m = _model()
    m.eval()
    state = {"module._orig_mod." + k: v for k, v in m.state_dict().items()}
    torch.save(state, tmp_path / "foreign.pth")
    spec = {"name": "resnet1d", "kwargs": {"input_shape": [40], "num_classes": 10, "width": 4}}
    ck = load_checkpoint(tmp_path / "foreign.pth", model=spec)
    x = torch.randn(3, 40)
    torch.testing.assert_close(ck.model(x), m(x))
    # an nn.Module instance works too, and a nested {"state_dict": ...}
    torch.save({"state_dict": m.state_dict(), "epoch": 3}, tmp_path / "nested.pth")
    target = _model()
    ck2 = load_checkpoint(tmp_path / "nested.pth", model=target)
    assert ck2.model is target and ck2.epoch == 3
    torch.testing.assert_close(ck2.model(x), m(x))


def test_foreign_without_spec_says_what_to_pass(tmp_path):
    torch.save(_model().state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="model=") as e:
        load_checkpoint(tmp_path / "bare.pt")
    assert "bare.pt" in str(e.value)


def test_mismatched_weights_named(tmp_path):
    torch.save(_model().state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "bare.pt", model={"name": "mlp", "kwargs": {}})


def test_strip_prefixes():
    assert list(strip_prefixes({"module.a": 1, "_orig_mod.module.b": 2, "c": 3})) == ["a", "b", "c"]


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 100, b"PK\x03\x04truncated", bytes(range(256)) * 3])
def test_corrupt_files_raise_our_error(tmp_path, content):
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pt: not a readable checkpoint"):
        load_checkpoint(p)


def test_truncated_checkpoint(tmp_path):
    p = save_checkpoint(tmp_path / "t.pt", _model())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="t.pt"):
        load_checkpoint(p)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    for name, writer in [
        ("evil_torch.pt", lambda p: torch.save({"model_state": _Evil(marker)}, p)),
        ("evil_raw.pt", lambda p: p.write_bytes(pickle.dumps(_Evil(marker)))),
    ]:
        p = tmp_path / name
        writer(p)
        with pytest.raises(CheckpointError, match="would need code execution") as e:
            load_checkpoint(p)
        assert name in str(e.value)
        assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_find_checkpoints_skips_duplicate_last(tmp_path):
    m = _model()
    for run in ("a", "b"):
        for e in (1, 2):
            save_checkpoint(tmp_path / run / f"epoch_{e:04d}.pt", m, epoch=e)
        save_checkpoint(tmp_path / run / "last.pt", m, epoch=2)
    save_checkpoint(tmp_path / "c" / "last.pt", m, epoch=2)
    found = [p.relative_to(tmp_path).as_posix() for p in find_checkpoints(tmp_path)]
    assert found == ["a/epoch_0001.pt", "a/epoch_0002.pt", "b/epoch_0001.pt", "b/epoch_0002.pt", "c/last.pt"]
    assert find_checkpoints(tmp_path / "a" / "last.pt") == [tmp_path / "a" / "last.pt"]


def test_atomic_save_leaves_no_temp(tmp_path):
    save_checkpoint(tmp_path / "x.pt", _model())
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_cuda_saved_file_loads_on_cpu(tmp_path):
    # A file written on a GPU machine records 'cuda:0' storage locations; plain torch.load fails
    # without CUDA, load_checkpoint maps them to the CPU.
    from unittest import mock

    import torch.serialization as ts

    m = _model()
    m.eval()
    with mock.patch.object(ts, "location_tag", lambda storage: "cuda:0"):
        torch.save({"module." + k: v for k, v in m.state_dict().items()}, tmp_path / "gpu.pth")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "gpu.pth", weights_only=True)
    spec = {"name": "resnet1d", "kwargs": {"input_shape": [40], "num_classes": 10, "width": 4}}
    ck = load_checkpoint(tmp_path / "gpu.pth", model=spec)
    assert all(p.device.type == "cpu" for p in ck.model.parameters())
    x = torch.randn(2, 40)
    torch.testing.assert_close(ck.model(x), m(x))


# ------------------------------------------------------------- layouts of files from other code

SPEC = {"name": "resnet1d", "kwargs": {"input_shape": [40], "num_classes": 10, "width": 4}}


def _outputs_equal(a, b):
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(1))
    a.eval()
    b.eval()
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("key", ["bare", "state_dict", "model_state_dict", "model", "net", "ema"])
def test_weights_under_every_key(tmp_path, key):
    m = _model()
    _sgd_steps(m)
    state = m.state_dict()
    torch.save(state if key == "bare" else {key: state, "note": "from a plain loop"}, tmp_path / "w.pt")
    ck = load_checkpoint(tmp_path / "w.pt", model=SPEC)
    _outputs_equal(ck.model, m)
    assert ck.layout == "state_dict" and ck.model_spec == SPEC


def test_weights_key_picks_ema(tmp_path):
    m, ema = _model(), _model()
    _sgd_steps(ema)
    torch.save({"model": m.state_dict(), "ema": ema.state_dict()}, tmp_path / "w.pt")
    _outputs_equal(load_checkpoint(tmp_path / "w.pt", model=SPEC).model, m)
    _outputs_equal(load_checkpoint(tmp_path / "w.pt", model=SPEC, weights_key="ema").model, ema)
    with pytest.raises(CheckpointError, match="weights_key='swa' is not a dict of tensors.*model, ema"):
        load_checkpoint(tmp_path / "w.pt", model=SPEC, weights_key="swa")


def _foreign_optimizer(model, kind):
    if kind == "sgd":
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    else:
        cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
        opt = cls([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(8, 40)).square().mean().backward()
        opt.step()
    return opt


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("opt_key", ["optimizer_state", "optimizer_state_dict", "optimizer", "optim"])
def test_momentum_from_foreign_optimizer_by_position(tmp_path, kind, opt_key):
    m = _model()
    opt = _foreign_optimizer(m, kind)
    torch.save({"model_state_dict": m.state_dict(), opt_key: opt.state_dict(), "epoch": 4}, tmp_path / "f.pt")
    ck = load_checkpoint(tmp_path / "f.pt", model=SPEC)
    mom = ck.momentum()
    buf = "momentum_buffer" if kind == "sgd" else "exp_avg"
    assert set(mom) == {n for n, _ in m.named_parameters()}
    for n, p in m.named_parameters():
        torch.testing.assert_close(mom[n], opt.state[p][buf], rtol=0, atol=0)
    assert (ck.epoch, ck.step, ck.step_source) == (4, 4, "epoch")


def test_momentum_maps_trainable_parameters_only(tmp_path):
    # a frozen stem is not in the optimizer: positions refer to the parameters with requires_grad
    def frozen_stem():
        net = build_model("resnet1d", input_shape=(40,), num_classes=10, width=4)
        first = next(net.parameters())
        first.requires_grad_(False)
        return net

    torch.manual_seed(0)
    m = frozen_stem()
    opt = _foreign_optimizer(m, "sgd")
    torch.save({"state_dict": m.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "f.pt")
    mom = load_checkpoint(tmp_path / "f.pt", model=frozen_stem).momentum()
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert list(mom) == trainable and len(trainable) == len(list(m.parameters())) - 1
    for n, p in m.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(mom[n], opt.state[p]["momentum_buffer"], rtol=0, atol=0)
    # the same file with a model whose stem is trainable: the counts differ, said so
    with pytest.raises(CheckpointError, match="covers .* parameters but the model has .* trainable"):
        load_checkpoint(tmp_path / "f.pt", model=SPEC).momentum()


def test_momentum_shapes_checked(tmp_path):
    m = _model()
    opt = torch.optim.SGD(list(m.parameters())[::-1], lr=0.1, momentum=0.9)  # another order
    m(torch.randn(4, 40)).square().mean().backward()
    opt.step()
    torch.save({"state_dict": m.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "f.pt")
    with pytest.raises(CheckpointError, match=r"f.pt: optimizer state entry 0 has shape .* but parameter .* has"):
        load_checkpoint(tmp_path / "f.pt", model=SPEC).momentum()


def _lightning_file(path, m, opt, **extra):
    """The layout PyTorch Lightning writes (no dependency on Lightning)."""
    obj = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {"model." + k: v for k, v in m.state_dict().items()} | extra,
        "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None}},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [{"last_epoch": 3, "base_lrs": [0.1]}],
        # plain-data objects scripts store: a Path, an argparse.Namespace (older Lightning)
        "hyper_parameters": {"lr": 0.1, "data_root": pathlib.Path("/data"), "args": argparse.Namespace(width=4)},
    }
    torch.save(obj, path)
    return path


def test_lightning_ckpt(tmp_path):
    m = _model()
    opt = _foreign_optimizer(m, "sgd")
    # a loss module's buffer beside the model, as LightningModules often have
    p = _lightning_file(tmp_path / "epoch=3-step=120.ckpt", m, opt, **{"criterion.weight": torch.ones(10)})
    ck = load_checkpoint(p, model=SPEC)
    _outputs_equal(ck.model, m)
    assert (ck.layout, ck.step, ck.epoch, ck.step_source) == ("lightning", 120, 3, "file")
    assert ck.raw["hyper_parameters"]["args"].width == 4
    for n, q in m.named_parameters():
        torch.testing.assert_close(ck.momentum()[n], opt.state[q]["momentum_buffer"], rtol=0, atol=0)
    assert find_checkpoints(tmp_path) == [p]


def test_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    m = _model()
    _sgd_steps(m)
    save_file(m.state_dict(), tmp_path / "model.safetensors", metadata={"step": "40", "format": "pt"})
    ck = load_checkpoint(tmp_path / "model.safetensors", model="resnet1d",
                         model_kwargs={"input_shape": [40], "num_classes": 10, "width": 4})
    _outputs_equal(ck.model, m)
    assert (ck.layout, ck.step, ck.step_source) == ("safetensors", 40, "file")
    with pytest.raises(CheckpointError, match="no optimizer state"):
        ck.momentum()
    with pytest.raises(CheckpointError, match="model.safetensors: holds weights but no model spec; pass model="):
        load_checkpoint(tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors: not a readable"):
        load_checkpoint(tmp_path / "cut.safetensors", model=SPEC)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("epoch_12.pt", {}, (12, 12, "epoch")),
        ("step=1000.ckpt", {}, (1000, 0, "name")),
        ("epoch=2-step=300.ckpt", {}, (300, 2, "name")),
        ("model-iter_50.pth", {}, (50, 0, "name")),
        ("weights.pt", {}, (0, 0, "none")),
        ("step=1000.pt", {"step": 7, "epoch": 1}, (7, 1, "file")),
        ("epoch_9.pt", {"epoch": 2}, (2, 2, "epoch")),
        ("x.pt", {"global_step": torch.tensor(11)}, (11, 0, "file")),
    ],
)
def test_step_and_epoch_from_keys_or_name(tmp_path, name, content, expected):
    torch.save({"state_dict": _model().state_dict(), **content}, tmp_path / name)
    ck = load_checkpoint(tmp_path / name, model=SPEC)
    assert (ck.step, ck.epoch, ck.step_source) == expected


def test_checkpoint_folder_with_weights_and_optimizer(tmp_path):
    from landscape.checkpoint import file_sha256

    m = _model()
    opt = _foreign_optimizer(m, "adamw")
    run = tmp_path / "run"
    for step, writer in ((500, "safetensors"), (1000, "bin")):
        folder = run / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if writer == "safetensors":
            from safetensors.torch import save_file

            save_file(m.state_dict(), folder / "model.safetensors")
        else:
            torch.save(m.state_dict(), folder / "pytorch_model.bin")
        torch.save(opt.state_dict(), folder / "optimizer.pt")
        (folder / "trainer_state.json").write_text("{}")
    found = find_checkpoints(tmp_path)
    assert found == [run / "checkpoint-1000", run / "checkpoint-500"]
    for folder, step in zip(found, (1000, 500)):
        ck = load_checkpoint(folder, model=SPEC)
        assert (ck.layout, ck.step, ck.step_source, ck.run) == ("folder", step, "name", "run")
        _outputs_equal(ck.model, m)
        for n, q in m.named_parameters():
            torch.testing.assert_close(ck.momentum()[n], opt.state[q]["exp_avg"], rtol=0, atol=0)
    assert find_checkpoints(found[1]) == [found[1]]  # named explicitly: the folder itself
    sha = file_sha256(found[1])
    torch.save({"state": {}, "param_groups": []}, found[1] / "optimizer.pt")
    assert file_sha256(found[1]) != sha


def test_foreign_file_with_user_model_next_to_the_checkpoints(tmp_path):
    # the user's module lies beside the run folder: found without search_paths
    (tmp_path / "userzoo_ck.py").write_text(
        "from torch import nn\n"
        "def make(width=3):\n"
        "    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))\n"
    )
    import sys

    try:
        net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
        (tmp_path / "run").mkdir()
        torch.save({"model_state_dict": net.state_dict(), "epoch": 1}, tmp_path / "run" / "epoch_1.pt")
        ck = load_checkpoint(tmp_path / "run" / "epoch_1.pt", model="userzoo_ck:make", model_kwargs={"width": 5})
        x = torch.randn(2, 4)
        torch.testing.assert_close(ck.model(x), net(x), rtol=0, atol=0)
        assert ck.model_spec == {"name": "userzoo_ck:make", "kwargs": {"width": 5}}
        # saved by landscape, the import path is the stored spec: it reloads without model=
        p = save_checkpoint(tmp_path / "run" / "again.pt", ck.model, step=2)
        torch.testing.assert_close(load_checkpoint(p).model(x), net(x), rtol=0, atol=0)
        with pytest.raises(CheckpointError, match="epoch_1.pt: cannot rebuild the model: cannot import 'userzoo_ck:mkae'.*did you mean 'make'"):
            load_checkpoint(tmp_path / "run" / "epoch_1.pt", model="userzoo_ck:mkae")
        with pytest.raises(CheckpointError, match="epoch_1.pt: cannot rebuild the model: model factory 'userzoo_ck:make'.*raised TypeError"):
            load_checkpoint(tmp_path / "run" / "epoch_1.pt", model="userzoo_ck:make", model_kwargs={"depth": 2})
    finally:
        sys.modules.pop("userzoo_ck", None)


def test_find_checkpoints_all_suffixes(tmp_path):
    m = _model()
    for name in ("a.pt", "b.pth", "c.ckpt", "notes.txt", "d.json"):
        torch.save(m.state_dict(), tmp_path / name)
    from safetensors.torch import save_file

    save_file(m.state_dict(), tmp_path / "e.safetensors")
    (tmp_path / ".a.pt.host.1-ab.tmp").write_bytes(b"")  # an atomic write's temporary
    assert [p.name for p in find_checkpoints(tmp_path)] == ["a.pt", "b.pth", "c.ckpt", "e.safetensors"]
