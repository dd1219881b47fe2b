"""Feature rank (Andriushchenko et al. 2023; SAM-ON Table 6; MSAM Appendix A.5).

References are independent of the code under test: features captured by hand (plain forward
hooks or the sub-networks called directly), centred explicitly in numpy and decomposed by
``numpy.linalg.svd``; the rank rule written out as in tml-epfl/sam-low-rank-features.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn
from torch.utils.data import TensorDataset

import landscape
from landscape import results
from landscape.analyses import feature_rank as fr
from landscape.analyses.feature_rank import FeatureRankOptions, RankCappedWarning, feature_rank
from landscape.analyses.registry import get_analysis, resolve_options
from landscape.checkpoint import save_checkpoint
from landscape.config import ConfigError
from landscape.models import build_model


def reference_rank(s, threshold=0.99):
    """tml-epfl/sam-low-rank-features, eval_feature_rank.py, written out."""
    return np.sum(np.cumsum(s**2) <= np.sum(s**2) * threshold) + 1


def centred(x: np.ndarray, centering: str) -> np.ndarray:
    if centering == "sample":
        return x - x.mean(axis=1, keepdims=True)
    if centering == "feature":
        return x - x.mean(axis=0, keepdims=True)
    return x


def numpy_svals(x: np.ndarray, centering: str) -> np.ndarray:
    return np.linalg.svd(centred(np.asarray(x, dtype=np.float64), centering), compute_uv=False)


def assert_spectrum(got, want, rtol=1e-9):
    """Equal ``s^2`` (what the rank reads) to float64 accuracy relative to the largest; a zero
    singular value comes back from any Gram route as ~sqrt(eps) * s_max."""
    got, want = np.asarray(got)[: len(want)], np.asarray(want)
    np.testing.assert_allclose(got**2, want**2, rtol=rtol, atol=1e-12 * want[0] ** 2)


def head(d: int) -> nn.Module:
    """An identity feature map: the input of the last (only) Linear is the data itself."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 2))


def labels(n: int) -> torch.Tensor:
    return torch.arange(n) % 2


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankCappedWarning)
        return fn(*args, **kwargs)


def designed(n: int, d: int, r: int, alpha: float, beta: float, noise: float = 1e-4, seed: int = 0):
    """``S + alpha a e_d^T + beta e_n b^T + noise``: S rank r with singular values 10, the second
    term a row offset (removed by sample centring), the third a column offset (removed by
    feature centring); all left vectors orthonormal to each other and to e_n = 1/sqrt(n), all
    right vectors to each other and to e_d. Exact spectra: none {10 x r, alpha, beta},
    sample {10 x r, beta}, feature {10 x r, alpha} (plus the noise)."""
    g = np.random.default_rng(seed)
    left, _ = np.linalg.qr(np.column_stack([np.ones(n), g.standard_normal((n, r + 1))]))
    right, _ = np.linalg.qr(np.column_stack([np.ones(d), g.standard_normal((d, r + 1))]))
    e_n, u, a = left[:, 0], left[:, 1 : r + 1], left[:, r + 1]
    e_d, v, b = right[:, 0], right[:, 1 : r + 1], right[:, r + 1]
    x = 10.0 * u @ v.T + alpha * np.outer(a, e_d) + beta * np.outer(e_n, b)
    return x + noise * g.standard_normal((n, d))


# ---------------------------------------------------------------- known spectra


@pytest.mark.parametrize(("n", "d"), [(60, 24), (24, 60)])
def test_known_rank_for_each_centering(n, d):
    r = 4
    x = designed(n, d, r, alpha=10.0, beta=10.0)
    # equal singular values: r+2 components (none), r+1 (sample: the row offset is gone;
    # feature: the column offset is gone); 99 % needs every one of them
    expected = {"none": r + 2, "sample": r + 1, "feature": r + 1}
    for centering, want in expected.items():
        res = quiet(feature_rank, head(d), (torch.tensor(x), labels(n)), n=n, batch_size=7, centering=centering,
                    dtype="float64")
        assert int(res["rank"].item()) == want, centering
        assert reference_rank(numpy_svals(x, centering)) == want, centering  # the explicit computation agrees
        assert res.attrs["centering"] == centering
        assert json.loads(res.attrs["config_json"])["centering"] == centering
    # unequal offsets: the centred spectra differ and each is the explicit one
    x = designed(n, d, r, alpha=30.0, beta=3.0)
    for centering in ("none", "sample", "feature"):
        res = quiet(feature_rank, head(d), (torch.tensor(x), labels(n)), n=n, batch_size=5, centering=centering,
                    dtype=torch.float64, threshold=0.9)
        want = numpy_svals(x, centering)
        got = res.singular_values.sel(layer="penultimate").values
        # the Gram route: absolute accuracy ~ eps * s_max^2 / s for the small ones
        np.testing.assert_allclose(got[: r + 2], want[: r + 2], rtol=1e-10, atol=1e-10 * want[0])
        assert int(res["rank"].item()) == reference_rank(want, 0.9)
    top = {c: quiet(feature_rank, head(d), (torch.tensor(x), labels(n)), n=n, centering=c, dtype="float64")
           .singular_values.values[0, 0] for c in ("none", "sample", "feature")}
    assert top["feature"] == pytest.approx(30.0, rel=1e-4) and top["none"] == pytest.approx(30.0, rel=1e-4)
    assert top["sample"] == pytest.approx(10.0, rel=1e-4)  # the row offset (30) is gone


@pytest.mark.parametrize(("n", "d"), [(50, 30), (30, 50), (40, 40)])
@pytest.mark.parametrize("centering", ["sample", "feature", "none"])
def test_gram_singular_values_equal_numpy_svd(n, d, centering, monkeypatch):
    monkeypatch.setattr(fr, "_CHUNK", 8)  # several row chunks on the X X^T side
    g = np.random.default_rng(1)
    x = g.standard_normal((n, d)) * np.linspace(0.1, 3.0, d) + 5.0  # a large mean: no cancellation
    res = quiet(feature_rank, head(d), TensorDataset(torch.tensor(x), labels(n)), n=n, batch_size=7,
                centering=centering, dtype="float64", threshold=0.95)
    want = numpy_svals(x, centering)
    got = res.singular_values.values[0]
    assert got.shape == (min(n, d),) and res.sizes["component"] == min(n, d)
    # s^2 (what the rank reads) to float64 accuracy; a zero s (sample centring has one when
    # n > d) comes back as ~sqrt(eps) * s_max, the floor of any Gram route
    np.testing.assert_allclose(got**2, want**2, rtol=1e-9, atol=1e-12 * want[0] ** 2)
    assert int(res["rank"].item()) == reference_rank(want, 0.95)
    cum = np.cumsum(want**2) / np.sum(want**2)
    np.testing.assert_allclose(res.explained_variance_ratio.values[0], cum, rtol=1e-9)
    assert int(res.feature_dim.item()) == d and int(res.n_samples) == n
    # neither one batch (eval mode: batching changes nothing) nor a float64 model instead of dtype copies
    other = quiet(feature_rank, head(d).double(), (torch.tensor(x), labels(n)), n=n, batch_size=None,
                  centering=centering, threshold=0.95)
    np.testing.assert_allclose(other.singular_values.values**2, res.singular_values.values**2, rtol=1e-9,
                               atol=1e-12 * want[0] ** 2)


def test_rank_rule_is_the_reference_including_its_edges():
    g = np.random.default_rng(2)
    for _ in range(20):
        s = np.sort(g.exponential(size=g.integers(1, 40)))[::-1]
        for t in (0.5, 0.9, 0.99, 1.0):
            assert fr.rank_from_singular_values(s, t) == reference_rank(s, t)
    assert fr.rank_from_singular_values(np.array([2.0, 1.0, 0.0]), 1.0) == 4  # threshold 1: all + 1
    assert fr.rank_from_singular_values(np.zeros(5), 0.99) == 6  # zero features: all + 1
    # zero features through the analysis: rank min(n, d) + 1, ratios undefined
    res = feature_rank(head(3), (torch.zeros(10, 3), labels(10)), n=10)
    assert int(res["rank"].item()) == 4 and np.isnan(res.explained_variance_ratio.values).all()


# ---------------------------------------------------------------- layers and hooks


def _capture(model, names, x):
    """Outputs of the named modules by plain forward hooks (the reference capture)."""
    modules, out, handles = dict(model.named_modules()), {}, []
    for name in names:
        handles.append(modules[name].register_forward_hook(lambda m, a, o, name=name: out.__setitem__(name, o)))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return {k: v.reshape(len(x), -1).double().numpy() for k, v in out.items()}


def test_stage_hooks_give_the_shapes_the_zoo_declares():
    torch.manual_seed(0)
    model = build_model("resnet_cifar", input_shape=(3, 8, 8), num_classes=5, depth=8, width=4).eval()
    x = torch.randn(40, 3, 8, 8)
    res = quiet(feature_rank, model, (x, labels(40)), n=40, layers=["B1", "B2", "B3", "penultimate", "layer2.0.conv1"],
                batch_size=16)
    # stage s has width 4 * 2^s channels at 8 / 2^s pixels a side; the head sees 16 pooled channels
    assert res.feature_dim.values.tolist() == [4 * 8 * 8, 8 * 4 * 4, 16 * 2 * 2, 16, 8 * 4 * 4]
    assert res.module.values.tolist() == ["layer1", "layer2", "layer3", "linear", "layer2.0.conv1"]
    assert res.hook.values.tolist() == ["output"] * 3 + ["input", "output"]
    assert res.capped_by_n.values.tolist() == [1, 1, 1, 0, 1]
    ref = _capture(model, ["layer1", "layer2", "layer3", "pool", "layer2.0.conv1"], x)
    for layer, module in zip(res.layer.values, ["layer1", "layer2", "layer3", "pool", "layer2.0.conv1"]):
        # the same float32 features, in float64 from there on: equal to float64 accuracy
        want = numpy_svals(ref[module], "sample")
        got = res.singular_values.sel(layer=layer).values[: len(want)]
        np.testing.assert_allclose(got**2, want**2, rtol=1e-9, atol=1e-12 * want[0] ** 2)
        assert int(res["rank"].sel(layer=layer)) == reference_rank(want)
    # NaN padding past min(n, d) of the narrow head
    assert np.isnan(res.singular_values.sel(layer="penultimate").values[16:]).all()

    mlp = build_model("mlp", input_shape=(6,), num_classes=3, width=12, depth=2)
    xm = torch.randn(30, 6)
    res = feature_rank(mlp, (xm, labels(30)), n=30, layers=["B1", "B2", "penultimate"])
    assert res.feature_dim.values.tolist() == [12, 3, 12]  # body -> width; head -> classes
    body = mlp.body(xm).detach().double().numpy()
    want = numpy_svals(body, "sample")
    np.testing.assert_allclose(res.singular_values.sel(layer="B1").values[:12] ** 2, want**2, rtol=1e-9,
                               atol=1e-12 * want[0] ** 2)
    np.testing.assert_allclose(res.singular_values.sel(layer="penultimate").values,
                               res.singular_values.sel(layer="B1").values)  # the head's input is the body's output


def test_resnet18_blocks_1_to_5_as_in_the_reference():
    """The reference's blocks 1-5 of ResNet-18 on CIFAR: the four stage outputs and the pooled
    512 features the classifier sees (all capped by n here, as layer1-3 are at n = 10,240)."""
    model = build_model("resnet18_cifar").eval()
    with pytest.warns(RankCappedWarning):
        res = feature_rank(model, (torch.randn(4, 3, 32, 32), labels(4)), n=4, layers="B1,B2,B3,B4,penultimate",
                           progress=False)
    assert res.feature_dim.values.tolist() == [64 * 32 * 32, 128 * 16 * 16, 256 * 8 * 8, 512 * 4 * 4, 512]
    assert res.module.values.tolist() == ["layer1", "layer2", "layer3", "layer4", "linear"]


def test_default_layer_is_the_input_of_the_last_linear():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(3)
            self.stem = nn.Linear(5, 9)
            self.mid = nn.Linear(9, 7)
            self.classifier = nn.Linear(7, 2)

        def forward(self, x):
            # the classifier sees tanh(mid(...)): a function, not a module's output
            return self.classifier(torch.tanh(self.mid(torch.relu(self.stem(x)))))

    net = Net()
    x = torch.randn(50, 5)
    res = feature_rank(net, (x, labels(50)), n=50)
    assert res.layer.values.tolist() == ["penultimate"] and res.module.values.tolist() == ["classifier"]
    feats = torch.tanh(net.mid(torch.relu(net.stem(x)))).detach().double().numpy()
    assert_spectrum(res.singular_values.values[0], numpy_svals(feats, "sample"))
    assert fr.layer_names(net)["penultimate"] == ("classifier", "input")


def test_n_at_most_the_dimension_is_flagged():
    x = torch.randn(16, 32)
    with pytest.warns(RankCappedWarning, match=r"n=16 examples <= the feature dimension of penultimate \(d=32\)"):
        res = feature_rank(head(32), (x, labels(16)), n=16)
    assert res.attrs["rank_capped_by_n"] == [1] and res.capped_by_n.values.tolist() == [1]
    assert json.loads(res.attrs["rank_capped_layers"]) == ["penultimate"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = feature_rank(head(8), (torch.randn(16, 8), labels(16)), n=16)
    assert res.attrs["rank_capped_by_n"] == [0]


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()])


def _assert_same(model, snap):
    state, modes = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == modes
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_model_unchanged_also_on_errors_and_train_mode_uses_batch_statistics():
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(6,), num_classes=3, width=8, depth=1, norm="batch")
    model.train()
    with torch.no_grad():  # non-trivial running statistics: eval and train mode differ
        model.body[2].running_mean.normal_()
        model.body[2].running_var.uniform_(0.5, 2.0)
    x = torch.randn(32, 6)
    snap = _snapshot(model)
    ev = feature_rank(model, (x, labels(32)), n=32, layers=["body.2"], dtype="float64", centering="none")
    _assert_same(model, snap)
    tr = feature_rank(model, (x, labels(32)), n=32, layers=["body.2"], bn_mode="train", batch_size=None,
                      centering="none")
    _assert_same(model, snap)  # running statistics untouched
    bn = model.body[2]  # Flatten, Linear, BatchNorm1d, ReLU
    with torch.no_grad():
        lin = model.body[1](x)
        want_ev = ((lin - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias).double().numpy()
        want_tr = torch.nn.functional.batch_norm(lin, None, None, bn.weight, bn.bias, training=True).double().numpy()
    assert_spectrum(ev.singular_values.values[0], numpy_svals(want_ev, "none"), rtol=1e-6)  # float32 reference
    assert_spectrum(tr.singular_values.values[0], numpy_svals(want_tr, "none"), rtol=1e-5)

    class Shared(nn.Module):  # one ReLU object used twice: no single output per example
        def __init__(self):
            super().__init__()
            self.a, self.act, self.b = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.act(self.a(self.act(x))))

    shared = Shared().train()
    snap = _snapshot(shared)
    with pytest.raises(ValueError, match=r"module 'act' ran 2 times in one forward pass"):
        feature_rank(shared, (torch.randn(8, 4), labels(8)), n=8, layers=["act", "a"])
    _assert_same(shared, snap)  # hooks removed and modes restored after the error

    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            self.a(x)
            raise RuntimeError("exploded mid-forward")

    boom = Boom().train()
    snap = _snapshot(boom)
    with pytest.raises(RuntimeError, match="exploded"):
        feature_rank(boom, (torch.randn(8, 4), labels(8)), n=8, layers=["a"])
    _assert_same(boom, snap)


def test_same_module_twice_and_a_module_that_never_runs():
    model = build_model("mlp", input_shape=(6,), num_classes=3, width=8, depth=1)
    x = torch.randn(20, 6)
    res = feature_rank(model, (x, labels(20)), n=20, layers=["B1", "body"])
    np.testing.assert_array_equal(res.singular_values.sel(layer="B1").values, res.singular_values.sel(layer="body").values)

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(4, 2), nn.Linear(4, 2)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(ValueError, match=r"module 'spare' ran 0 times.*not used by forward"):
        feature_rank(Unused(), (torch.randn(8, 4), labels(8)), n=8, layers=["spare"])


# ---------------------------------------------------------------- bad input


def test_bad_inputs_are_clear_errors():
    model = build_model("resnet_cifar", input_shape=(3, 8, 8), num_classes=5, depth=8, width=4)
    x = torch.randn(12, 3, 8, 8)
    with pytest.raises(ValueError, match=r"unknown layer 'layr1' for ResNetCifar \(did you mean 'layer1'\?\); "
                                         r"accepted: 'penultimate' \(the input of 'linear'\); stages B1 \(layer1\), "
                                         r"B2 \(layer2\), B3 \(layer3\); module names conv1, bn1, relu, layer1,"):
        feature_rank(model, (x, labels(12)), n=12, layers=["layr1"])
    with pytest.raises(ValueError, match=r"unknown layer 'B4'.*stages B1 \(layer1\), B2 \(layer2\), B3 \(layer3\)"):
        feature_rank(model, (x, labels(12)), n=12, layers="B4")
    convs = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten())
    with pytest.raises(ValueError, match=r"Sequential has no nn.Linear, so there is no penultimate layer.*"
                                         r"module names 0, 1, 2"):
        feature_rank(convs, (x, labels(12)), n=12)
    for t in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=rf"threshold={t} is not accepted; accepted: a fraction in \(0, 1\]"):
            feature_rank(model, (x, labels(12)), n=12, threshold=t)
    with pytest.raises(ValueError, match=r"n=20 examples asked for, but the data hold only 12"):
        feature_rank(model, (x, labels(12)), n=20)
    with pytest.raises(ConfigError, match=r"centering='pca' is not accepted.*'sample', 'feature', 'none'"):
        feature_rank(model, (x, labels(12)), n=12, centering="pca")
    with pytest.raises(ConfigError, match=r"max_samples=6 conflicts with n=12"):
        feature_rank(model, (x, labels(12)), n=12, max_samples=6)
    with pytest.raises(ConfigError, match=r"logit_normalize=True does not apply"):
        feature_rank(model, (x, labels(12)), n=12, logit_normalize=True)
    with pytest.raises(ConfigError, match=r"output_fn=.* does not apply"):
        feature_rank(model, (x, labels(12)), n=12, output_fn="torch:sum")
    bad = torch.randn(12, 3, 8, 8)
    bad[7, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"module 'layer1' \(output\) gave NaN or infinite features \(examples 4 to 7\)"):
        feature_rank(model, (bad, labels(12)), n=12, layers=["B1"], batch_size=4)
    with pytest.raises(ConfigError, match=r"layers has repeated names"):
        FeatureRankOptions(layers=("B1", "B1"))
    # the batch runner's check, before any task: data.n keeps fewer examples than feature_rank.n
    with pytest.raises(ConfigError, match=r"feature_rank needs 10240 examples but data.n=256"):
        resolve_options(["feature_rank"], {"data": {"n": 256}})
    opts, _ = resolve_options(["feature_rank"], {"data": {"n": 256}, "feature_rank": {"n": 256, "layers": "B1,B2"}},
                              loss="mse")  # a run-wide loss is accepted (and not used)
    assert opts["feature_rank"].layers == ("B1", "B2") and opts["feature_rank"].loss == "mse"


# ---------------------------------------------------------------- batch runs and the API


DATA = {"dataset": "synthetic", "dataset_kwargs": {"num_samples": 24, "input_shape": [4], "num_classes": 3, "seed": 1}}
OPTIONS = {"feature_rank": {"n": 24, "layers": ["B1", "penultimate"], "batch_size": 10}}


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """Two runs x two checkpoints of a small BatchNorm MLP, analysed by ``landscape.analyze``."""
    root = tmp_path_factory.mktemp("featrank")
    for run in ("sgd", "sam"):
        for step in (10, 20):
            torch.manual_seed(step + len(run))
            m = build_model("mlp", input_shape=(4,), num_classes=3, width=6, depth=2, norm="batch")
            save_checkpoint(root / "ck" / run / f"epoch_{step:04d}.pt", m, step=step, epoch=step // 10,
                            metrics={}, config=DATA)
    summary = landscape.analyze(root / "ck", "feature_rank", options=OPTIONS, out=root / "res", progress=False)
    assert summary.ok and len(summary.done) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ds = results.open_results(root / "res", "feature_rank")
    return {"root": root, "ds": ds}


def test_through_landscape_analyze_on_a_checkpoint_folder(analysed):
    ds, root = analysed["ds"], analysed["root"]
    assert ds["rank"].dims == ("run", "step", "layer") and ds.layer.values.tolist() == ["B1", "penultimate"]
    assert sorted(ds.run.values.tolist()) == ["sam", "sgd"] and ds.step.values.tolist() == [10, 20]
    ck = landscape.load_checkpoint(root / "ck" / "sam" / "epoch_0020.pt")
    direct = feature_rank(ck.model, landscape.get_dataset("synthetic", **DATA["dataset_kwargs"]), **OPTIONS["feature_rank"])
    got = ds.sel(run="sam", step=20)
    np.testing.assert_array_equal(got["rank"].values, direct["rank"].values)
    np.testing.assert_array_equal(got.singular_values.values, direct.singular_values.values)
    assert got.singular_values.attrs["units"] == "1" and "long_name" in got.explained_variance_ratio.attrs
    assert get_analysis("feature_rank").options({"n": 24}).required_samples() == 24
    assert landscape.feature_rank is feature_rank and landscape.FeatureRankOptions is FeatureRankOptions


# ---------------------------------------------------------------- figures


def test_rank_bars_draw_the_stored_ranks(analysed):
    from landscape import plots

    ds = analysed["ds"]
    fig = plots.feature_rank_bars(ds)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "feature rank" and ax.get_xlabel() == "layer"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["B1", "penultimate"]
    assert "sample-centred" in ax.get_title() and "n = 24" in ax.get_title() and "step 20" in ax.get_title()
    for container, run in zip(ax.containers, ds.run.values):
        heights = [b.get_height() for b in container]
        assert heights == ds["rank"].sel(run=run, step=20).values.astype(float).tolist()
        assert container.get_label() == run
    fig = plots.feature_rank_bars(ds, step=10, layers=["penultimate"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["penultimate"]
    with pytest.raises(plots.PlotError, match=r"layer\(s\) \['B9'\] are not in the feature_rank result"):
        plots.feature_rank_bars(ds, layers=["B9"])
    with pytest.raises(plots.PlotError, match="needs a 'feature_rank' result"):
        plots.feature_rank_bars(xr.Dataset(attrs={"analysis": "hessian"}))
    # a direct result with a capped layer: hatched bars and a legend entry
    with pytest.warns(RankCappedWarning):
        direct = feature_rank(head(32), (torch.randn(16, 32), labels(16)), n=16)
    ax = plots.feature_rank_bars(direct).axes[0]
    assert ax.containers[0][0].get_hatch() == "///"
    assert "capped by n\n(n <= d)" in [t.get_text() for t in ax.figure.legends[0].get_texts()]


def test_rank_over_steps_one_panel_per_layer(analysed):
    from landscape import plots

    ds = analysed["ds"]
    fig = plots.feature_rank_vs_step(ds)
    axes = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in axes] == ["B1", "penultimate"]
    for ax, layer in zip(axes, ["B1", "penultimate"]):
        assert ax.get_xlabel() and ax.get_ylabel() in ("feature rank", "")
        lines = [ln for ln in ax.get_lines() if ln.get_label() in ds.run.values]
        for line in lines:
            np.testing.assert_array_equal(line.get_xdata(), [10, 20])
            np.testing.assert_array_equal(line.get_ydata(), ds["rank"].sel(run=line.get_label(), layer=layer).values)
        assert len(lines) == 2
    assert axes[0].get_ylabel() == "feature rank"


def test_landscape_plot_draws_the_feature_rank_figures(analysed, tmp_path):
    from landscape.plots.cli import plot_results

    written, failures = plot_results(analysed["root"] / "res", tmp_path / "fig", analyses="feature_rank")
    assert not failures
    assert sorted(p.name for p in written) == ["feature_rank_layers.pdf", "feature_rank_layers.png",
                                               "feature_rank_step.pdf", "feature_rank_step.png"]
    assert (tmp_path / "fig" / "feature_rank_layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "fig" / "feature_rank_step.pdf").read_bytes()[:5] == b"%PDF-"


def test_readme_example_runs(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text[text.index("### Feature rank (`landscape.feature_rank`)"):]
    section = section[: section.index("\n## ")]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # n > d in the example: nothing capped
        exec(compile(code, "README.md (Feature rank)", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "body" in out and "penultimate" in out and "[512   8]" in out
