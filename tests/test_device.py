"""device=, TF32, half-precision defaults and peak memory of every analysis (CUDA parts skipped without CUDA)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from landscape.analyses.common import comparable
from landscape.analyses.feature_rank import feature_rank
from landscape.analyses.hessian import hessian_spectrum
from landscape.analyses.momentum import momentum_curvature
from landscape.analyses.norm_params import norm_params
from landscape.analyses.robustness import robustness
from landscape.analyses.sharpness import sharpness
from landscape.analyses.slices import loss_slice, slice_analysis
from landscape.config import ConfigError
from landscape.objective import Objective, ObjectiveOptions, analysis_device

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def mlp(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.Tanh(), nn.Linear(width, 3)).eval()


def data(n: int = 32):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def run_all(model, xy, **kw):
    """Every data-using analysis at toy size, with the same extra keywords."""
    mom = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    d = [{n: torch.ones_like(p) for n, p in model.named_parameters()}]
    return {
        "hessian": hessian_spectrum(model, xy, top_k=2, trace_samples=6, slq_runs=1, slq_steps=5, grid_points=20,
                                    progress=False, **kw),
        "sharpness": sharpness(model, xy, m=16, n=32, steps=2, rho=0.01, progress=False, **kw),
        "momentum": momentum_curvature(model, xy, mom, random_directions=1, **kw),
        "slice": loss_slice(model, xy, d, grid="-1:1:3", progress=False, **kw),
        "slice_analysis": slice_analysis(model, xy, grid="-1:1:3", progress=False, **kw),
        "feature_rank": feature_rank(model, xy, n=32, progress=False, **{k: v for k, v in kw.items()
                                                                           if k != "micro_batch_size"}),
        "robustness": robustness(model, xy, n=8, eps=0.0, **{k: v for k, v in kw.items() if k != "micro_batch_size"}),
    }


# ---------------------------------------------------------------- device names and errors


def test_device_cpu_honoured_and_recorded_in_every_analysis():
    model, xy = mlp(), data()
    for name, res in run_all(model, xy, device=torch.device("cpu")).items():
        assert json.loads(res.attrs["config_json"])["device"] == "cpu", name  # a torch.device, recorded by name
        assert res.attrs["compute_device"] == "cpu", name
        assert res.attrs["peak_memory_device"] == "cpu" and res.attrs["peak_memory_bytes"] >= 0, name
        assert "ru_maxrss" in res.attrs["peak_memory_measure"], name
        assert res.attrs["compute_dtype"] == "float32", name
    assert norm_params(model).attrs["compute_device"] == "cpu"


def test_objective_tensors_live_on_the_device_asked_for_and_model_is_untouched():
    model, xy = mlp(), data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    obj = Objective(model, xy, batch_size=10, device="cpu")
    assert obj.device == torch.device("cpu") and obj.theta0.device.type == "cpu"
    assert all(x.device.type == "cpu" and y.device.type == "cpu" for x, y in obj.batches())
    assert all(t.device.type == "cpu" for t in (*obj._fixed.values(), *obj._buffers.values()))
    obj.hvp(torch.ones(obj.numel), method="double-backward")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert "device='cpu'" in repr(obj)


@pytest.mark.skipif(CUDA, reason="checks the error raised without CUDA")
def test_cuda_without_cuda_is_a_clear_error_in_every_analysis():
    model, xy = mlp(), data()
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=r"device='cuda(:1)?': CUDA is not available.*accepted on this machine"):
            Objective(model, xy, device=device)
    calls = {
        "hessian": lambda: hessian_spectrum(model, xy, device="cuda", progress=False),
        "sharpness": lambda: sharpness(model, xy, m=16, n=32, device="cuda", progress=False),
        "feature_rank": lambda: feature_rank(model, xy, n=32, device="cuda", progress=False),
        "robustness": lambda: robustness(model, xy, n=8, eps=0.0, device="cuda"),
        "slice": lambda: slice_analysis(model, xy, device="cuda", progress=False),
    }
    for name, call in calls.items():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            call()
            pytest.fail(f"{name}: no error")


def test_bad_device_names_the_option_and_lists_the_accepted():
    with pytest.raises(ConfigError, match=r"ObjectiveOptions.device='gpu' is not accepted; accepted: auto, cpu, cuda"):
        ObjectiveOptions(device="gpu")
    with pytest.raises(ConfigError, match=r"device=3 is not accepted; accepted: None \(the model's device\)"):
        analysis_device(3)
    with pytest.raises(ConfigError, match="device='tpu' is not accepted"):
        hessian_spectrum(mlp(), data(), device="tpu", progress=False)
    assert ObjectiveOptions(device="cuda:1").device == "cuda:1"  # options can be written without CUDA
    assert analysis_device("auto") == torch.device("cuda" if CUDA else "cpu")


# ---------------------------------------------------------------- precision


def test_half_precision_model_is_analysed_in_float32_unless_dtype_says_otherwise():
    model, xy = mlp(), data()
    half = mlp().to(torch.bfloat16)
    ref = mlp()
    ref.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.state_dict().items()})
    kw = dict(top_k=2, trace=False, density=False, progress=False)
    got = hessian_spectrum(half, xy, **kw)
    want = hessian_spectrum(ref, xy, **kw)
    assert got.attrs["compute_dtype"] == "float32"
    assert torch.equal(torch.as_tensor(got.eigenvalues.values), torch.as_tensor(want.eigenvalues.values))
    assert hessian_spectrum(half, xy, dtype="float64", **kw).attrs["compute_dtype"] == "float64"
    s = sharpness(half, xy, m=16, n=32, steps=2, progress=False)
    assert s.attrs["compute_dtype"] == "float32" and s.sharpness.dtype.kind == "f"
    assert feature_rank(half, xy, n=32, progress=False).attrs["compute_dtype"] == "float32"
    assert model is not None


class _FlagLoss(nn.Module):
    """Cross-entropy that records the CUDA/cuDNN fp32 precision flags in force when it runs."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def forward(self, z, y):
        b = torch.backends
        self.seen.add((b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision))
        return nn.functional.cross_entropy(z, y)


@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_applied_while_computing_restored_after_and_recorded(tf32):
    b = torch.backends
    before = (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision)
    model, xy = mlp(), data()
    lossf = _FlagLoss()
    res = hessian_spectrum(model, xy, loss=lossf, top_k=1, trace=False, density=False, tf32=tf32, progress=False)
    want = "tf32" if tf32 else "ieee"
    assert lossf.seen == {(want, want)}
    assert (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision) == before
    assert res.attrs["tf32"] == int(tf32) and json.loads(res.attrs["config_json"])["tf32"] is tf32
    # restored on errors too
    with pytest.raises(RuntimeError, match="boom"):
        def bad(z, y):
            raise RuntimeError("boom")
        sharpness(model, xy, loss=bad, m=16, n=32, tf32=tf32, progress=False)
    assert (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision) == before


def test_feature_rank_bf16_autocast_reports_the_float32_difference_at_the_checkpoint():
    model, xy = mlp(16), data(64)
    lo = feature_rank(model, xy, n=64, batch_size=16, autocast="bf16", layers=["penultimate", "0"], progress=False)
    hi = feature_rank(model, xy, n=64, batch_size=16, layers=["penultimate", "0"], progress=False)
    err = lo.autocast_feature_error.values
    assert lo.autocast_feature_error.dims == ("layer",) and ((err > 0) & (err < 0.05)).all()  # bf16: ~2^-8
    assert lo.attrs["autocast"] == "bf16" and "autocast_feature_error" not in hi
    assert abs(lo.singular_values - hi.singular_values).max() / float(hi.singular_values.max()) < 0.05
    with pytest.raises(ConfigError, match="autocast='fp8' is not accepted"):
        feature_rank(model, xy, n=64, autocast="fp8", progress=False)


# ---------------------------------------------------------------- measured attributes


def test_peak_memory_attrs_do_not_break_comparisons():
    model, xy = mlp(), data()
    a = sharpness(model, xy, m=16, n=32, steps=2, progress=False)
    b = sharpness(model, xy, m=16, n=32, steps=2, progress=False)
    b.attrs["peak_memory_bytes"] = a.attrs["peak_memory_bytes"] + 12345  # what another run could measure
    assert not a.identical(b) and comparable(a).identical(comparable(b))
    assert "peak_memory_bytes" not in comparable(a).attrs and "peak_memory_device" in comparable(a).attrs


# ---------------------------------------------------------------- CUDA (skipped without one)


class _CpuWork(TorchDispatchMode):
    """Records what a silent CPU fallback would do: a matrix product or convolution reading a CPU
    tensor of at least ``numel`` elements (the model evaluated on the host), or a device-to-host
    copy of one (e.g. a Lanczos vector brought back inside the loop). Host-to-device copies are
    allowed: random probes are drawn on the CPU so that a seed gives the same numbers everywhere."""

    HEAVY = ("mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward", "linear", "matmul")

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        big = [a for a in args if isinstance(a, torch.Tensor) and a.numel() >= self.numel]
        if name in self.HEAVY and any(a.device.type == "cpu" for a in big):
            self.ops.append(str(func))
        if name in ("_to_copy", "copy_") and isinstance(out, torch.Tensor) and out.device.type == "cpu" \
                and any(a.device.type != "cpu" for a in big):
            self.ops.append(f"{func} (device to host)")
        return out


def _wide():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 3))  # P = 4675


def test_cpu_work_detector_can_fail():
    # The detector the CUDA test relies on does see parameter-sized CPU work on the CPU.
    model, xy = _wide(), data(16)
    with _CpuWork(2000) as mode:
        hessian_spectrum(model, xy, top_k=1, trace=False, density=False, hvp_method="double-backward",
                         device="cpu", progress=False)
    assert mode.ops


@needs_cuda
def test_cuda_device_honoured_model_on_cpu_untouched_and_no_silent_cpu_fallback():
    model, xy = _wide(), data(16)  # model and data on the CPU, analysed on CUDA
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with _CpuWork(2000) as mode:
        res = hessian_spectrum(model, xy, top_k=2, trace_samples=6, slq_runs=1, slq_steps=5, grid_points=20,
                               hvp_method="double-backward", device="cuda", progress=False)
    assert not mode.ops, mode.ops[:5]  # nothing of parameter size computed on the CPU
    assert res.attrs["compute_device"].startswith("cuda") and res.attrs["peak_memory_device"].startswith("cuda")
    assert res.attrs["peak_memory_bytes"] > 0
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    cpu = hessian_spectrum(model, xy, top_k=2, trace=False, density=False, hvp_method="double-backward",
                           device="cpu", progress=False)
    assert abs(float(res.eigenvalues[0]) - float(cpu.eigenvalues[0])) <= 1e-4 * abs(float(cpu.eigenvalues[0]))


@needs_cuda
def test_cuda_every_analysis_runs_there_with_peak_memory():
    model, xy = mlp(), data()
    for name, res in run_all(model, xy, device="cuda").items():
        assert res.attrs["compute_device"].startswith("cuda"), name
        assert res.attrs["peak_memory_bytes"] > 0, name
        assert "max_memory_allocated" in res.attrs["peak_memory_measure"], name
    with _CpuWork(4000) as mode:
        sharpness(_wide(), data(), m=16, n=32, steps=3, device="cuda", progress=False)
    assert not mode.ops, mode.ops[:5]


@needs_cuda
def test_cuda_model_analysed_on_cpu_when_asked():
    model = mlp().cuda()
    res = hessian_spectrum(model, data(), top_k=1, trace=False, density=False, device="cpu", progress=False)
    assert res.attrs["compute_device"] == "cpu"
    assert all(p.device.type == "cuda" for p in model.parameters())


def test_readme_gpu_example_runs(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text[text.index("### Analyses on a GPU"):]
    section = section[: section.index("\n## ")]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    exec(compile(code, "README.md (Analyses on a GPU)", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out.split()
    assert out[0] == ("cuda:0" if CUDA else "cpu") and out[1] == "float32" and 0 < float(out[-1]) < 0.05


def test_emulated_tf32_rounds_conv_and_matmul_operands_forward_and_backward():
    from landscape.precision import emulated_tf32, round_to_tf32

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 6, generator=g, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=g)
    with emulated_tf32():
        y = nn.functional.conv2d(x, w)
        (gx,) = torch.autograd.grad(y.square().sum(), x)
    want = nn.functional.conv2d(round_to_tf32(x.detach()), round_to_tf32(w))
    assert torch.equal(y.detach(), want)
    exact = nn.functional.conv2d(x.detach(), w)
    rel = float((y.detach() - exact).abs().max() / exact.abs().max())
    assert 1e-5 < rel < 1e-2  # TF32: ~2^-11 per operand
    gx_exact = torch.autograd.grad(nn.functional.conv2d(x, w).square().sum(), x)[0]
    assert 1e-5 < float((gx - gx_exact).abs().max() / gx_exact.abs().max()) < 1e-2  # backward rounded too
    d = torch.randn(5, dtype=torch.float64)
    assert torch.equal(round_to_tf32(d), d)  # float64 untouched
    bits = round_to_tf32(torch.randn(1000, generator=g)).view(torch.int32)
    assert int((bits & 0x1FFF).abs().max()) == 0  # 13 low mantissa bits cleared: 10 remain
