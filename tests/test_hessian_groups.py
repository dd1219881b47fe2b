"""Per-group Hessian spectra: one call, a ``group`` dimension, each block H_bb exact.

Ground truth: dense float64 Hessians of the whole network by reverse-over-reverse
(``torch.autograd.functional.hessian`` of an independent loss, tests/reference.py), cut into
the diagonal blocks of the groups.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from landscape.analyses.hessian import HessianOptions, hessian_spectrum
from landscape.config import ConfigError
from landscape.params import GroupError, expand_groups, is_per_group, layer_groups, select
from tests.reference import data, reference_loss, tiny_bn_cnn

FAST = dict(top_k=3, tol=1e-10, slq_runs=2, slq_steps=12, trace_samples=150, trace_rtol=0.0,
            grid_points=64, progress=False)


class Staged(nn.Sequential):
    """A conv + BatchNorm + head model that declares two stages (conv, BatchNorm)."""

    stages = ("0", "1")


def _cnn() -> nn.Module:
    m = tiny_bn_cnn(side=4)  # conv 30, BatchNorm 6, linear 39 parameters
    return m.double()


@pytest.fixture(scope="module")
def dense():
    """The model, its data and the dense float64 Hessian over all parameters."""
    m = _cnn()
    x, y = data(24, (1, 4, 4), dtype=torch.float64)
    theta = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    H = torch.autograd.functional.hessian(reference_loss(m, x, y), theta)
    offsets, start = {}, 0
    for n, p in m.named_parameters():
        offsets[n] = (start, start + p.numel())
        start += p.numel()
    return m, (x, y), H, offsets


def _block(H, offsets, names):
    idx = torch.cat([torch.arange(*offsets[n]) for n in names])
    return H[idx][:, idx]


def test_each_layer_blocks_match_dense_hessian(dense):
    m, xy, H, offsets = dense
    res = hessian_spectrum(m, xy, params="each:layer", batch_size=None, **FAST)
    assert list(res.group.values) == ["0", "1", "4"]
    assert list(res.group_module.values) == ["Conv2d", "BatchNorm2d", "Linear"]
    assert res.eigenvalues.dims == ("group", "k") and res.trace.dims == ("group",)
    for name, names in layer_groups(m):
        block = _block(H, offsets, names)
        ev = torch.linalg.eigvalsh(block).flip(0)[:3].numpy()
        got = res.eigenvalues.sel(group=name).values
        np.testing.assert_allclose(got, ev, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(float(res.trace.sel(group=name)), float(block.trace()), rtol=1e-6, atol=1e-9)
        assert int(res.group_parameters.sel(group=name)) == block.shape[0]
        # SLQ nodes are Ritz values of the block: inside its spectrum.
        nodes = res.slq_nodes.sel(group=name).values
        lo, hi = float(torch.linalg.eigvalsh(block)[0]), float(ev[0])
        fin = nodes[np.isfinite(nodes)]
        assert fin.size and fin.min() >= lo - 1e-8 and fin.max() <= hi + 1e-8
        dens = res.density.sel(group=name).values
        grid = res.eigenvalue.sel(group=name).values
        assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=0.02)
    assert res.loss.dims == ()
    assert res.attrs["params"] == "each:layer" and res.attrs["num_parameters"] == 75
    assert json.loads(res.attrs["config_json"])["params"] == "each:layer"


def test_list_gives_one_group_per_item_and_equals_single_calls(dense):
    m, xy, H, offsets = dense
    groups = ["glob:0.*|4.bias", "1.weight", "norm"]
    res = hessian_spectrum(m, xy, params=groups, batch_size=None, **FAST)
    assert list(res.group.values) == groups
    assert list(res.group_module.values) == ["", "BatchNorm2d", "BatchNorm2d"]
    for g in groups:
        names = list(select(m, (g,) if g == "1.weight" else g))
        block = _block(H, offsets, names)
        np.testing.assert_allclose(res.eigenvalues.sel(group=g).values,
                                   torch.linalg.eigvalsh(block).flip(0)[:3].numpy(), rtol=1e-8, atol=1e-10)
    # A union stays one group when written as one spec; same numbers as the grouped call.
    one = hessian_spectrum(m, xy, params="norm", batch_size=None, **FAST)
    assert "group" not in one.dims
    np.testing.assert_allclose(one.eigenvalues.values, res.eigenvalues.sel(group="norm").values, rtol=1e-12)
    np.testing.assert_allclose(float(one.trace), float(res.trace.sel(group="norm")), rtol=1e-12)


def test_each_stage_and_several_batches(dense):
    m, xy, H, offsets = dense
    staged = Staged(*m)  # same modules, so the same parameters and names
    res = hessian_spectrum(staged, xy, params="each:stage", batch_size=10, hvp_method="auto",
                           **{**FAST, "top_k": 2})
    assert list(res.group.values) == ["B1", "B2"] and res.attrs["hvp_method"] == "double-backward"
    for g, prefix in (("B1", "0."), ("B2", "1.")):
        block = _block(H, offsets, [n for n in offsets if n.startswith(prefix)])
        np.testing.assert_allclose(res.eigenvalues.sel(group=g).values,
                                   torch.linalg.eigvalsh(block).flip(0)[:2].numpy(), rtol=1e-8, atol=1e-10)


def test_grouped_eigenvectors_are_per_block(dense):
    m, xy, H, offsets = dense
    res = hessian_spectrum(m, xy, params=["glob:1.*", "glob:4.*"], batch_size=None, eigenvectors=True,
                           density=False, trace=False, **{**FAST, "top_k": 2})
    assert res.eigenvectors.dims == ("k", "parameter") and res.sizes["parameter"] == 6 + 39
    for g, names in (("glob:1.*", ["1.weight", "1.bias"]), ("glob:4.*", ["4.weight", "4.bias"])):
        v = res.eigenvectors.isel(parameter=res.parameter_group.values == g).values
        block = _block(H, offsets, names)
        lam = res.eigenvalues.sel(group=g).values
        np.testing.assert_allclose(block.numpy() @ v.T, v.T * lam, atol=1e-8)
        assert list(dict.fromkeys(res.parameter_name.values[res.parameter_group.values == g])) == names


def test_grouped_result_round_trips_through_netcdf_and_open_results(dense, tmp_path):
    from landscape.results import open_results, read_result, write_result

    m, xy, _, _ = dense
    res = hessian_spectrum(m, xy, params=["glob:1.*", "glob:4.*"], batch_size=None,
                            **{**FAST, "slq_steps": 8, "trace_samples": 9, "tol": 1e-3})
    for run, step in (("a", 1), ("b", 2)):
        write_result(res, tmp_path / run / f"epoch_{step}" / "hessian-0123456789.nc", analysis="hessian", run=run,
                     step=step, checkpoint=f"{run}/epoch_{step}.pt", checkpoint_sha256="0" * 64, options_hash="0123456789")
    back = read_result(tmp_path / "a" / "epoch_1" / "hessian-0123456789.nc")
    assert list(back.group.values) == ["glob:1.*", "glob:4.*"]
    np.testing.assert_array_equal(back.eigenvalues.squeeze(("run", "step")).values, res.eigenvalues.values)
    # The 6-parameter block's SLQ runs stop at 6 nodes: padded with NaN nodes and zero weights.
    w = res.slq_weights.sel(group="glob:1.*").values
    assert np.all(w[:, 6:] == 0) and np.isnan(res.slq_nodes.sel(group="glob:1.*").values[:, 6:]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ds = open_results(tmp_path, "hessian")
    assert ds.eigenvalues.dims == ("run", "step", "group", "k")
    assert {"group", "grid"} <= set(ds.eigenvalue.dims)  # (run, step) too where the grids differ
    np.testing.assert_array_equal(ds.trace.sel(run="b", step=2).values, res.trace.values)
    assert np.isnan(ds.trace.sel(run="b", step=1).values).all()  # steps a run lacks are NaN


# ------------------------------------------------------------------ expansions


class Odd(nn.Module):
    """Root-level parameters, a tied weight, a frozen layer and an attention block."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(4))
        self.embed = nn.Linear(4, 4)
        self.attn = nn.MultiheadAttention(4, 2)
        self.norm = nn.LayerNorm(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(4, 4)
        self.head.weight = self.embed.weight  # tied: counted once, under 'embed.weight'
        self.pos = nn.Parameter(torch.zeros(4))


def test_each_layer_names_order_and_rules():
    groups = layer_groups(Odd())
    assert groups == [
        ("cls_token", ("cls_token",)),  # the model's own parameters come first, as in named_parameters
        ("pos", ("pos",)),
        ("embed", ("embed.weight", "embed.bias")),
        ("attn", ("attn.in_proj_weight", "attn.in_proj_bias")),
        ("attn.out_proj", ("attn.out_proj.weight", "attn.out_proj.bias")),
        ("norm", ("norm.weight", "norm.bias")),
        ("head", ("head.bias",)),
    ]
    assert expand_groups(Odd(), "each:layer") == groups
    # Every trainable parameter is in exactly one group.
    names = [n for _, ns in groups for n in ns]
    assert sorted(names) == sorted(n for n, p in Odd().named_parameters() if p.requires_grad)


def test_each_stage_and_list_expansion():
    from landscape.models import build_model

    m = build_model("resnet1d", input_shape=(40,), num_classes=10, width=4)
    assert expand_groups(m, "each:stage") == [("B1", "B1"), ("B2", "B2"), ("B3", "B3")]
    got = expand_groups(m, ["B1+B2", "each:stage", "fc.bias"])
    assert [n for n, _ in got] == ["B1+B2", "B1", "B2", "B3", "fc.bias"] and got[-1][1] == ("fc.bias",)
    assert is_per_group(["all"]) and is_per_group(" each:layer") and not is_per_group("B1+B2")


@pytest.mark.parametrize("spec, match", [
    ("each:stage", r"'each:stage' needs a model with a `stages` attribute .*Odd has none: use 'each:layer'"),
    ("each:layers", r"unknown per-group spec 'each:layers' \(did you mean 'each:layer'\?\); accepted: each:layer"),
    ([], "an empty list of parameter groups"),
    (["norm", "norm"], "'norm' appears twice"),
    (["norm", "B7"], "declares no `stages`"),
    (["glob:nothing.*"], "selects no parameters"),
    ([3], "is not a non-empty string"),
])
def test_expansion_errors(spec, match):
    with pytest.raises(GroupError, match=match):
        expand_groups(Odd(), spec)


def test_other_analyses_refuse_per_group_specs(dense):
    from landscape.analyses.sharpness import sharpness

    m, xy, _, _ = dense
    with pytest.raises(GroupError, match=r"'each:layer' stands for several parameter groups.*only per-group"):
        select(m, "each:layer")
    with pytest.raises(GroupError, match="stands for several parameter groups"):
        sharpness(m, xy, params="each:layer", n=8, m=8, steps=1, progress=False)
    with pytest.raises(ConfigError, match=r"SharpnessOptions.params=\[.B1., .B2.\] is not accepted; accepted: a string"):
        sharpness(m, xy, params=["B1", "B2"], n=8, m=8, steps=1, progress=False)


def test_options_from_toml_list_and_errors(dense):
    assert HessianOptions.from_dict({"params": ["B1", "B2"]}).params == ("B1", "B2")
    assert HessianOptions.from_dict({"params": "each:stage"}).params == "each:stage"
    with pytest.raises(ConfigError, match="non-empty list"):
        HessianOptions(params=())
    m, xy, _, _ = dense
    with pytest.raises(ValueError, match=r"top_k=8 is larger than the dimension of parameter group '1' \(6 "
                                         r"parameters\); use top_k <= 6 \(the smallest of the 3 groups\)"):
        hessian_spectrum(m, xy, params="each:layer", **{**FAST, "top_k": 8})


# ------------------------------------------------------------------ figure, analyze, CLI

HESSIAN_OPTS = {"top_k": 2, "max_samples": 24, "batch_size": 24, "slq_runs": 2, "slq_steps": 8,
                "trace_samples": 9, "grid_points": 50, "tol": 1e-3}
DATA = {"dataset": "synthetic", "dataset_kwargs": {"num_samples": 24, "input_shape": [4], "num_classes": 3, "seed": 1}}


def _checkpoints(root):
    from landscape.checkpoint import save_checkpoint
    from landscape.models import build_model

    for r, run in enumerate(("sam", "sgd")):
        for i in range(2):
            torch.manual_seed(10 * r + i)
            m = build_model("mlp", input_shape=(4,), num_classes=3, width=6, depth=1, norm="batch")
            save_checkpoint(root / run / f"epoch_{i:04d}.pt", m, step=10 * i, epoch=i, metrics={}, config=DATA)
    return root


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """Two runs x two checkpoints analysed by `landscape analyze` with params = "each:layer" (TOML)."""
    from landscape.cli_analyze import main

    root = tmp_path_factory.mktemp("groups")
    ckpts = _checkpoints(root / "ckpts")
    cfg = root / "analyze.toml"
    cfg.write_text("[data]\nn = 24\n[hessian]\nparams = \"each:layer\"\n"
                   + "".join(f"{k} = {json.dumps(v)}\n" for k, v in HESSIAN_OPTS.items()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Lanczos may stop short on tiny blocks
        rc = main(["analyze", str(ckpts), "--analyses", "hessian", "--out", str(root / "res"), "--config", str(cfg)])
    assert rc == 0
    return {"root": root, "ckpts": ckpts, "res": root / "res"}


def _open(folder):
    from landscape.results import open_results

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return open_results(folder, "hessian")


@pytest.fixture(scope="module")
def grouped(analysed):
    return _open(analysed["res"])


def test_analyze_each_layer_from_toml(grouped):
    ds = grouped
    assert ds.eigenvalues.dims == ("run", "step", "group", "k")
    assert list(ds.run.values) == ["sam", "sgd"] and list(ds.step.values) == [0, 10]
    # mlp(depth=1, norm="batch"): Linear, BatchNorm, head - one group each, in model order.
    assert len(ds.group) == 3 and ds.group.values[-1] == "head"
    assert json.loads(ds.attrs["config_json"])["params"] == "each:layer"
    assert np.isfinite(ds.eigenvalues.values).all() and np.isfinite(ds.trace.values).all()


def test_analyze_set_each_stage_and_a_toml_list(analysed, tmp_path):
    from landscape.cli_analyze import main

    one = analysed["ckpts"] / "sgd" / "epoch_0001.pt"
    sets = [arg for k, v in HESSIAN_OPTS.items() for arg in ("--set", f"hessian.{k}={json.dumps(v)}")]
    rc = main(["analyze", str(one), "--analyses", "hessian", "--out", str(tmp_path / "a"),
               "--set", "data.n=24", "--set", "hessian.params=each:stage", *sets])
    assert rc == 0 and list(_open(tmp_path / "a").group.values) == ["B1", "B2"]
    cfg = tmp_path / "list.toml"
    cfg.write_text("[data]\nn = 24\n[hessian]\nparams = [\"B2\", \"norm\"]\n"
                   + "".join(f"{k} = {json.dumps(v)}\n" for k, v in HESSIAN_OPTS.items()))
    rc = main(["analyze", str(one), "--analyses", "hessian", "--out", str(tmp_path / "b"), "--config", str(cfg)])
    assert rc == 0 and list(_open(tmp_path / "b").group.values) == ["B2", "norm"]


def test_plot_cli_draws_the_layer_figure_and_skips_one_group_figures(analysed, capsys):
    from landscape.cli import main

    out = analysed["root"] / "figs"
    assert main(["plot", str(analysed["res"]), "--analyses", "hessian", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["hessian_layers.pdf", "hessian_layers.png"]
    assert (out / "hessian_layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "hessian_layers.pdf").read_bytes()[:5] == b"%PDF-"


def test_layer_figure_draws_the_stored_numbers(grouped):
    from landscape import plots

    ds = grouped
    fig = plots.layer_spectra(ds)
    lam_ax, trace_ax = fig.axes
    assert lam_ax.get_ylabel() == r"top eigenvalue $\lambda_{\max}$ (nats)"
    assert trace_ax.get_ylabel() == "trace (nats)" and trace_ax.get_xlabel() == "parameter group (model order)"
    assert [t.get_text() for t in trace_ax.get_xticklabels()] == [f"{g} ({k})" for g, k in zip(
        ds.group.values, ["Linear", "BatchNorm1d", "Linear"])]
    lines = [ln for ln in lam_ax.get_lines() if ln.get_label() != "_nolegend_"]
    assert [ln.get_label() for ln in lines] == ["sam", "sgd"]  # the last step of each run, bold
    for ln in lines:
        np.testing.assert_allclose(ln.get_ydata(), ds.eigenvalues.sel(run=ln.get_label(), step=10, k=1).values)
    assert len(lam_ax.get_lines()) == 4  # and step 0 of each run, lighter
    one = plots.layer_spectra(ds, step=0)
    assert len(one.axes[0].get_lines()) == 2 and "step 0" in one.axes[0].get_title()
    direct = plots.layer_spectra(ds.isel(run=0, step=0, drop=True))  # an analysis' own output: no step
    assert direct.axes[0].get_title().startswith("each group's Hessian block\n")
    with pytest.raises(plots.PlotError, match=r"no eigenvalues at step=5; steps with data: \[0, 10\]"):
        plots.layer_spectra(ds, step=5)
    for fn in (plots.top_eigenvalues, plots.trace, plots.spectral_density):  # one-group figures refuse, clearly
        with pytest.raises(plots.PlotError, match=fn.__name__ + r" draws one parameter group; this result holds 3 "
                                                  r"groups \(body.1, body.2, head\): pick one with ds.sel\(group=NAME\)"):
            fn(ds)
    with pytest.raises(plots.PlotError, match="layer_spectra needs a 'hessian' result .*missing group"):
        plots.layer_spectra(ds.isel(group=0, drop=True))
