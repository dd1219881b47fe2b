"""Checkpoint format: round trip, foreign files, refusal of bad files, momentum buffers."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

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
