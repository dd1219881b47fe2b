"""The analysis contract: one set of objective options, every data / output / loss form in every
analysis, and the small defects of issue 9 (torch.dtype, scalar rho, eigenvector names)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference import data, flat_params, tiny_mlp
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from landscape.analyses import registry
from landscape.analyses.common import NON_OPTION_KEYWORDS
from landscape.analyses.hessian import hessian_spectrum
from landscape.analyses.momentum import momentum_curvature
from landscape.analyses.sharpness import SharpnessOptions, sharpness
from landscape.config import ConfigError
from landscape.data import ArrayDataset
from landscape.losses import LossError
from landscape.objective import Objective, ObjectiveOptions

FAST_H = dict(top_k=3, tol=1e-6, max_steps=30, trace=False, density=False, progress=False)
FAST_S = dict(m=8, n=24, steps=3, rho=[0.01, 0.05], progress=False)


class Examples(Dataset):
    """A plain map-style dataset of (x, y) examples (collated in chunks, no fast path)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def momentum_of(model):
    g = torch.Generator().manual_seed(5)
    return {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in model.named_parameters()}


def run_all(model, d, hessian=None, sharp=None, **kw):
    return (hessian_spectrum(model, d, batch_size=8, **{**FAST_H, **(hessian or {})}, **kw),
            sharpness(model, d, **{**FAST_S, **(sharp or {})}, **kw),
            momentum_curvature(model, d, momentum_of(model), batch_size=8, random_directions=1, **kw))


def same_numbers(a, b, rtol=1e-12):
    for ra, rb in zip(a, b):
        for name in ("eigenvalues", "sharpness", "loss_clean", "curvature", "slope"):
            if name in ra:
                np.testing.assert_allclose(ra[name].values, rb[name].values, rtol=rtol, atol=1e-15, err_msg=name)


# ---------------------------------------------------------------- one options contract


def test_registry_signatures_and_options_agree():
    """Every analysis landscape registers has keyword options that are exactly its dataclass'
    fields (names and defaults). (Other tests register their own toy analyses: left out.)"""
    own = [n for n in registry.analysis_names() if str(registry.entry_spec(n)["fn"]).startswith("landscape.")]
    assert {"hessian", "sharpness", "momentum", "norm_params"} <= set(own)
    for name in own:
        a = registry.get_analysis(name)
        sig = inspect.signature(a.fn)
        kw = {n: p.default for n, p in sig.parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in NON_OPTION_KEYWORDS}
        fields = {f.name: f.default for f in dataclasses.fields(a.options_cls)}
        assert kw == fields, name
        opts = a.options_cls()
        # every options class answers it: sharpness, feature_rank and robustness need n examples,
        # the others max_samples (None)
        assert opts.required_samples() == {"sharpness": 1024, "feature_rank": 10240, "robustness": 1000}.get(name), name
        if a.needs_data:
            assert issubclass(a.options_cls, ObjectiveOptions), name
            shared = {f.name for f in dataclasses.fields(ObjectiveOptions)}
            assert shared <= set(fields), name
        for f in dataclasses.fields(opts):  # JSON-plain defaults
            json.dumps(getattr(opts, f.name))


def test_required_samples_and_sharpness_m_n_mapping():
    assert registry.get_analysis("hessian").options({"max_samples": 300}).required_samples() == 300
    assert registry.get_analysis("momentum").options({}).required_samples() is None
    s = SharpnessOptions.from_dict({"n": 2048, "m": 128})
    assert s.required_samples() == 2048
    assert s.objective_kwargs()["batch_size"] == 128 and s.objective_kwargs()["max_samples"] == 2048
    assert SharpnessOptions(m=64, n=256, batch_size=64, max_samples=256).m == 64  # agreeing values are fine
    with pytest.raises(ConfigError, match="batch_size=32 conflicts with m=128"):
        SharpnessOptions(batch_size=32)
    with pytest.raises(ConfigError, match="max_samples=256 conflicts with n=1024"):
        SharpnessOptions.from_dict({"max_samples": 256})
    with pytest.raises(ConfigError, match="loss='nll' is not accepted"):
        ObjectiveOptions(loss="nll")


def test_from_options_with_overrides(f64):
    model = tiny_mlp().double()
    x, y = data(10, (5,))
    opts = ObjectiveOptions(batch_size=4, max_samples=9, loss="mse")
    obj = Objective.from_options(model, (x, y), opts)
    assert obj.batch_sizes == [4, 4, 1] and obj.loss_spec.spec == "mse"
    ce = Objective.from_options(model, (x, y), opts, loss=nn.CrossEntropyLoss(), batch_size=None)
    assert ce.batch_sizes == [9] and ce.loss_spec.units == "nats"
    with pytest.raises(TypeError, match="unknown override"):
        Objective.from_options(model, (x, y), opts, top_k=3)


# ---------------------------------------------------------------- data, output and loss forms


def test_every_data_form_gives_the_results_of_the_tuple(f64):
    model = tiny_mlp().double()
    x, y = data(24, (5,))
    # Equal batches give equal numbers at any budget: a small one keeps the test fast.
    cheap = {"hessian": {"top_k": 1, "tol": 1e-1, "max_steps": 8}, "sharp": {"steps": 2, "rho": [0.05]}}
    ref = run_all(model, (x, y), **cheap)
    loaders = {
        "ArrayDataset": ArrayDataset(x, y, num_classes=3),
        "TensorDataset": TensorDataset(x, y),
        "DataLoader": DataLoader(TensorDataset(x, y), batch_size=5),
        "map-style Dataset": Examples(x, y),
        "dict batches": [{"x": x[s:s + 5], "labels": y[s:s + 5]} for s in range(0, 24, 5)],
        "tuple batches": [(x[s:s + 9], y[s:s + 9], torch.arange(9)) for s in range(0, 24, 9)],
        "batch_fn": [{"pixels": x[s:s + 7], "cls": y[s:s + 7]} for s in range(0, 24, 7)],
    }
    for name, d in loaders.items():
        kw = {"batch_fn": lambda b: (b["pixels"], b["cls"])} if name == "batch_fn" else {}
        same_numbers(ref, run_all(model, d, **cheap, **kw))


def test_dict_and_tuple_output_models_match_the_tensor_model(f64):
    base = tiny_mlp().double()

    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = base

        def forward(self, x):
            return {"logits": self.net(x), "features": x}

    class TupleOut(DictOut):
        def forward(self, x):
            return self.net(x), x

    class Custom(DictOut):
        def forward(self, x):
            return {"scores": self.net(x)}

    x, y = data(24, (5,))
    ref = run_all(base, (x, y))
    same_numbers(ref, run_all(DictOut(), (x, y)))
    same_numbers(ref, run_all(TupleOut(), (x, y)))
    same_numbers(ref, run_all(Custom(), (x, y), output_fn=lambda o: o["scores"]))
    with pytest.raises(TypeError, match=r"returned a dict with keys \['scores'\].*accepted model outputs"):
        hessian_spectrum(Custom(), (x, y), **FAST_H)


def test_loss_callables_in_every_analysis_are_recorded_and_used(f64):
    model = tiny_mlp().double()
    x, y = data(24, (5,))
    smooth = nn.CrossEntropyLoss(label_smoothing=0.1)
    h, s, m = run_all(model, (x, y), loss=smooth)
    for res in (h, s, m):
        assert "label_smoothing=0.1" in json.loads(res.attrs["config_json"])["loss"]
        assert res.attrs["loss_units"] == "nats"
    # The same function as a hand-written label-smoothed loss.
    hand = run_all(model, (x, y), loss=lambda z, t: (1 - 0.1) * F.cross_entropy(z, t) - 0.1 * z.log_softmax(-1).mean())
    same_numbers((h, s, m), hand, rtol=1e-10)
    assert h.eigenvalues.attrs["units"] == "nats" and s.sharpness.attrs["units"] == "nats"
    with pytest.raises(LossError, match="returned a tensor of shape"):
        sharpness(model, (x, y), loss=nn.CrossEntropyLoss(reduction="none"), **FAST_S)


def test_regression_targets_everywhere(f64):
    model = tiny_mlp().double()
    x, _ = data(24, (5,))
    t = torch.randn(24, 3, generator=torch.Generator().manual_seed(3))
    h, s, m = run_all(model, TensorDataset(x, t), loss="mse")
    assert "error_clean" not in s and "error_perturbed" not in s  # no classification error
    assert s.sharpness.attrs["units"] == "1" and h.attrs["loss_units"] == "1"
    assert float(s.sharpness_mean.sel(rho=0.01)) >= 0
    # Against a dense reverse-over-reverse Hessian of the hand-written MSE.
    names = [n for n, _ in model.named_parameters()]
    shapes, sizes = [p.shape for p in model.parameters()], [p.numel() for p in model.parameters()]

    def f(theta):
        ps = {k: v.view(sh) for k, v, sh in zip(names, theta.split(sizes), shapes)}
        return ((torch.func.functional_call(model, ps, (x,)) - t) ** 2).mean()

    H = torch.autograd.functional.hessian(f, flat_params(model))
    np.testing.assert_allclose(h.eigenvalues.values, torch.linalg.eigvalsh(H).flip(0)[:3].numpy(), rtol=1e-7)


# ---------------------------------------------------------------- frozen parameters, dtype, rho, names


def test_frozen_parameters_are_held_fixed(f64):
    model = tiny_mlp().double()
    model[0].weight.requires_grad_(False)  # frozen: never in a group, held at its value
    x, y = data(24, (5,))
    res = hessian_spectrum(model, (x, y), eigenvectors=True, batch_size=8, **FAST_H)
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    H = torch.autograd.functional.hessian(
        lambda th: F.cross_entropy(torch.func.functional_call(
            model, {k: v.view(p.shape) for k, v, p in zip(names, th.split(sizes), model.parameters())}, (x,)), y),
        flat_params(model))
    k = sizes[0]  # the frozen weight comes first in the flat vector of all parameters
    block = H[k:, k:]
    np.testing.assert_allclose(res.eigenvalues.values, torch.linalg.eigvalsh(block).flip(0)[:3].numpy(), rtol=1e-7)
    assert set(res.parameter_name.values) == {"0.bias", "2.weight", "2.bias"}
    s = sharpness(model, (x, y), kind="one-step", **FAST_S)
    assert json.loads(s.attrs["parameter_names"]) == ["0.bias", "2.weight", "2.bias"]
    assert s.attrs["num_parameters"] == sum(sizes[1:])


def test_torch_dtype_everywhere_scalar_rho_and_eigenvector_names():
    model = tiny_mlp()  # float32 model, float64 analysis
    x, y = data(24, (5,))
    for res in run_all(model, (x, y), dtype=torch.float64):
        assert json.loads(res.attrs["config_json"])["dtype"] == "float64"
        for key in ("landscape_version", "torch_version", "calls_loss", "num_samples"):
            assert key in res.attrs
    assert next(model.parameters()).dtype == torch.float32
    one = sharpness(model, (x, y), kind="one-step", rho=0.01, m=8, n=24, progress=False)
    assert isinstance(float(one.sharpness_mean.sel(rho=0.01)), float)
    assert SharpnessOptions.from_dict({"rho": 0.01}).rho == (0.01,)
    h = hessian_spectrum(model, (x, y), eigenvectors=True, **FAST_H)
    names = h.parameter_name.values
    assert list(dict.fromkeys(names)) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    w = h.eigenvectors.isel(k=0).where(h.parameter_name == "2.bias", drop=True)
    assert w.sizes["parameter"] == 3 and list(h.parameter_offset.values[-3:]) == [0, 1, 2]


def test_progress_logs_lines_when_not_a_terminal(caplog):
    model = tiny_mlp()
    x, y = data(16, (5,))
    with caplog.at_level(logging.INFO, logger="landscape"):
        hessian_spectrum(model, (x, y), top_k=2, trace=False, density=False)
        sharpness(model, (x, y), m=8, n=16, steps=2)
    text = caplog.text
    assert "hessian P=" in text and "sharpness worst" in text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="landscape"):
        sharpness(model, (x, y), m=8, n=16, steps=2, progress=False)
    assert caplog.text == ""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_stages_batches_on_its_device_and_matches_cpu():
    model = tiny_mlp().double()
    x, y = data(24, (5,), dtype=torch.float64)
    ref = run_all(model, DataLoader(TensorDataset(x, y), batch_size=5))
    got = run_all(model.cuda(), DataLoader(TensorDataset(x, y), batch_size=5))  # CPU data, CUDA model
    assert next(model.parameters()).is_cuda
    same_numbers(ref, got, rtol=1e-9)
