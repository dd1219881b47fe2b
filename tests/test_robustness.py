"""Adversarial robustness (issue 13): agreement with pyautoattack run directly, eps = 0, the
standardization round trip, per-example results, no global state changed, bad input, batch runs
and the figure; and the CIFAR-10 ResNet-18 that ships inside the pyautoattack wheel."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import landscape
from landscape.analyses import robustness as rob
from landscape.analyses.robustness import RobustnessOptions, RobustnessWarning, robustness
from landscape.config import ConfigError
from landscape.data import ArrayDataset

try:
    import pyautoattack as pyaa
    from pyautoattack import autopgd_base, checks
except ImportError:  # the tests that attack are skipped; eps = 0, options and errors still run
    pyaa = autopgd_base = checks = None
needs_pyautoattack = pytest.mark.skipif(pyaa is None, reason="pyautoattack is not installed (pip install pyautoattack==0.2.0)")

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # the CIFAR-10 constants of the zoo
FAST = dict(steps=6, n=24, batch_size=10)


def img_model(classes: int = 10) -> nn.Module:
    """Conv + BatchNorm (non-trivial running statistics) + linear for (3, 4, 4) inputs."""
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                      nn.Linear(64, classes))
    m[1].running_mean.normal_(0, 0.1)
    m[1].running_var.uniform_(0.5, 2.0)
    return m


def img_data(model: nn.Module, n: int = 24, seed: int = 0):
    """Images in [0, 1]; labels = the model's predictions except every fourth (clean accuracy 3/4)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 4, 4, generator=g)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    y[::4] = (y[::4] + 1) % model[-1].out_features
    return x, y


def standardize(x01: torch.Tensor) -> torch.Tensor:
    """What the CIFAR loader does: float32 (x - mean) / std per channel."""
    return (x01 - torch.tensor(MEAN).reshape(1, 3, 1, 1)) / torch.tensor(STD).reshape(1, 3, 1, 1)


def zoo_set(x_std: torch.Tensor, y: torch.Tensor) -> ArrayDataset:
    return ArrayDataset(x_std, y, 10, "cifar10", "test", info={"normalized": True, "mean": list(MEAN), "std": list(STD)})


class Normalize(nn.Module):
    def forward(self, x):
        return (x - torch.tensor(MEAN).reshape(1, 3, 1, 1)) / torch.tensor(STD).reshape(1, 3, 1, 1)


def direct(model, x01, y, *, attack, eps, norm, steps, seed=0, batch_size=10):
    """pyautoattack as its README shows it, on the model itself, with the settings robustness
    documents (1 restart, ``steps`` iterations, min(9, C - 1) target classes)."""
    model.eval()
    aa = pyaa.AutoAttack(model, attacks=list(rob.ATTACKS[attack]), device="cpu", eps=eps, norm=norm, seed=seed,
                         version="custom")
    common = dict(n_restarts=1, n_iter=steps, verbose=False, eps=eps, norm=norm, eot_iter=1, rho=0.75, seed=seed,
                  device="cpu", logger=aa.logger)
    aa.apgd = autopgd_base.APGDAttack(model, **common)
    aa.apgd_targeted = autopgd_base.APGDAttack_targeted(model, n_target_classes=9, **common)
    _, y_adv = aa.run_standard_evaluation(x01, y, batch_size=batch_size)
    return (y_adv == y).numpy()


# ---------------------------------------------------------------- agreement with pyautoattack


@pytest.mark.parametrize("attack,norm,eps", [("apgd-ce", "Linf", (2 / 255, 8 / 255)), ("apgd-t", "L2", (0.1, 0.3)),
                                             ("autoattack-cheap", "Linf", (4 / 255,))])
@needs_pyautoattack
def test_agrees_bitwise_with_pyautoattack_run_directly(attack, norm, eps):
    model = img_model()
    x, y = img_data(model)
    ours = robustness(model, (x, y), attack=attack, norm=norm, eps=eps, **FAST)
    for i, e in enumerate(eps):
        ref = direct(copy.deepcopy(model), x, y, attack=attack, eps=e, norm=norm, steps=FAST["steps"])
        np.testing.assert_array_equal(ours.robust_correct.values[i], ref)
        assert float(ours.robust_accuracy[i]) == ref.mean()
    # the comparison has teeth: some examples are broken, some are not
    assert 0 < float(ours.robust_accuracy[-1]) < float(ours.clean_accuracy) == 0.75


@needs_pyautoattack
def test_standardized_zoo_data_agree_with_pyautoattack_on_the_normalized_model():
    model = img_model()
    x01, y = img_data(model)
    x_std = standardize(x01)
    ours = robustness(model, zoo_set(x_std, y), eps=[8 / 255], **FAST)
    assert json.loads(ours.attrs["standardization"]) == {"mean": list(MEAN), "std": list(STD), "source": "data set"}
    # "the same examples": the [0, 1] images robustness recovers from the standardized ones
    x_back = (x_std.double() * torch.tensor(STD).double().reshape(1, 3, 1, 1)
              + torch.tensor(MEAN).double().reshape(1, 3, 1, 1)).float().clamp(0, 1)
    ref = direct(nn.Sequential(Normalize(), copy.deepcopy(model)), x_back, y, attack="apgd-ce", eps=8 / 255,
                 norm="Linf", steps=FAST["steps"])
    np.testing.assert_array_equal(ours.robust_correct.values[0], ref)
    # the explicit option gives the same as the data set's own record
    same = robustness(model, (x_std, y), eps=[8 / 255], normalization=(MEAN, STD), **FAST)
    np.testing.assert_array_equal(same.robust_correct.values, ours.robust_correct.values)


def test_standardization_round_trips_to_float_rounding():
    """Not bit for bit: (x * std + mean - mean) / std differs from x in the last place or two."""
    model = img_model()
    x01, y = img_data(model)
    x_std = standardize(x01)
    mean, std = rob._stats(MEAN, x_std), rob._stats(STD, x_std)
    recovered = (x_std.double() * std.double() + mean.double()).float()
    f = rob._Attacked(model.eval(), (3, 4, 4), mean, std, None, None)
    again = f.standardized(recovered.reshape(24, -1))
    ulp = torch.finfo(torch.float32).eps * x_std.abs().clamp_min(1)
    assert ((again - x_std).abs() <= 2 * ulp).all()
    assert (recovered - x01).abs().max() <= 2 * torch.finfo(torch.float32).eps
    with torch.no_grad():
        torch.testing.assert_close(f(recovered), model(x_std), rtol=1e-5, atol=1e-6)
        assert torch.equal(f(recovered).argmax(1), model(x_std).argmax(1))
    res = robustness(model, zoo_set(x_std, y), eps=[0], n=24)
    with torch.no_grad():
        np.testing.assert_array_equal(res.clean_correct.values, (model(x_std).argmax(1) == y).numpy())


# ---------------------------------------------------------------- eps = 0, per-example results


def test_eps_zero_is_the_clean_accuracy_without_any_attack(monkeypatch):
    model = img_model()
    x, y = img_data(model)
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # no attack can run
    res = robustness(model, TensorDataset(x, y), eps=0.0, n=24)
    with torch.no_grad():
        expected = (model(x).argmax(1) == y).float().mean().item()
    assert float(res.clean_accuracy) == float(res.robust_accuracy.sel(eps=0)) == expected == 0.75
    assert res.attrs["calls_grad"] == 0 and res.attrs["autoattack_checks"] == "[]"


@needs_pyautoattack
def test_per_example_results_are_consistent_with_the_accuracies():
    model = img_model()
    x, y = img_data(model)
    res = robustness(model, (x, y), eps=[0, 2 / 255, 16 / 255], **FAST)
    assert res.robust_correct.dims == ("eps", "example") and res.clean_correct.dims == ("example",)
    np.testing.assert_array_equal(res.example_index.values, np.arange(24))
    np.testing.assert_array_equal(res.label.values, y.numpy())
    np.testing.assert_allclose(res.robust_accuracy.values, res.robust_correct.values.mean(1))
    assert float(res.clean_accuracy) == res.clean_correct.values.mean()
    assert (res.robust_correct.values <= res.clean_correct.values).all()  # a wrong example stays wrong
    np.testing.assert_array_equal(res.robust_correct.values[0], res.clean_correct.values)
    assert (res.max_perturbation.values <= res.eps.values + 1e-6).all()
    assert res.max_perturbation.values[-1] > 0  # examples were broken at 16/255
    assert res.attrs["calls_grad"] > 0 and res.attrs["num_classes"] == 10 and res.attrs["n_target_classes"] == 9


@needs_pyautoattack
def test_three_d_inputs_and_float64_models_work():
    """APGD attacks flat vectors, so (N, C, L) inputs work (pyautoattack alone unsqueezes them to
    4-D); a float64 model gets its inputs cast (pyautoattack attacks float32 inputs)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(12, 4)).double()
    x, y = torch.rand(12, 2, 6), torch.randint(0, 4, (12,))
    res = robustness(model, (x, y), eps=[0.1], n=12, steps=3, attack="autoattack-cheap")
    assert 0 <= float(res.robust_accuracy[0]) <= float(res.clean_accuracy)
    aa = pyaa.AutoAttack(copy.deepcopy(model).float().eval(), attacks=["apgd-ce"], eps=0.1, seed=0, version="custom")
    with pytest.raises(RuntimeError, match=r"conv1d, but got input of size: \[1, 3, 2, 6\]"):
        aa.run_standard_evaluation(x, y, batch_size=12)  # pyautoattack alone: 3-D batches made 4-D
    res32 = robustness(model.float(), (x, y), eps=[0.1], n=12, steps=3, dtype="float64")
    assert res32.attrs["calls_grad"] > 0


# ---------------------------------------------------------------- nothing global changes


@needs_pyautoattack
def test_global_rng_tracer_logger_and_model_are_left_as_they_were():
    model = img_model()
    x, y = img_data(model)
    model.train()
    model[0].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    lazy = dict(vars(torch.cuda._lazy_seed_tracker))
    calls = []

    def tracer(frame, event, arg):  # a debugger's or coverage's tracer stands for any
        calls.append(event)

    old_tracer = sys.gettrace()
    sys.settrace(tracer)
    try:
        res = robustness(model, (x, y), eps=[4 / 255], attack="autoattack-cheap", **FAST)
        kept = sys.gettrace()
    finally:
        sys.settrace(old_tracer)
    assert kept is tracer
    assert torch.equal(torch.get_rng_state(), rng)
    assert dict(vars(torch.cuda._lazy_seed_tracker)) == lazy
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(1234)))
    assert logging_untouched()
    assert model.training and all(m.training for m in model.modules())
    assert not model[0].bias.requires_grad and model[0].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert res.attrs["calls_grad"] > 0


def logging_untouched() -> bool:
    import logging

    logger = logging.getLogger("auto-attack")
    return logger.propagate and not logger.handlers and logger.level == logging.NOTSET


class Dynamic(nn.Module):
    """Calls a method named ``backward`` in its forward: pyautoattack's sign of a dynamic defense."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def backward(self, z):
        return z

    def forward(self, x):
        return self.backward(self.inner(x))


class Noisy(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + 0.1 * torch.randn(x.shape[0], 10)


@needs_pyautoattack
def test_autoattack_checks_surface_as_warnings_and_attributes():
    model = img_model()
    x, y = img_data(model)
    kw = dict(eps=[2 / 255], **FAST)
    with pytest.warns(RobustnessWarning, match="dynamic defense"):
        res = robustness(Dynamic(model), (x, y), **kw)
    assert json.loads(res.attrs["autoattack_checks"]) == ["dynamic"]
    assert "dynamic defense" in json.loads(res.attrs["autoattack_warnings"])[0]
    # pyautoattack never resets its call counters: without the reset every later model is "dynamic"
    counts = dict(checks.funcs)
    clean = robustness(model, (x, y), **kw)
    assert json.loads(clean.attrs["autoattack_checks"]) == [] and checks.funcs == counts
    with pytest.warns(RobustnessWarning, match="randomized defense"):
        noisy = robustness(Noisy(model), (x, y), **kw)
    assert "randomized" in json.loads(noisy.attrs["autoattack_checks"])
    with pytest.warns(RobustnessWarning, match="probability distribution"):
        soft = robustness(nn.Sequential(model, nn.Softmax(-1)), (x, y), **kw)
    assert "output_range" in json.loads(soft.attrs["autoattack_checks"])
    assert logging_untouched()


# ---------------------------------------------------------------- bad input


def test_bad_options_and_inputs_are_clear_errors(monkeypatch):
    model = img_model()
    x, y = img_data(model)
    with pytest.raises(ConfigError, match=r"eps must hold finite radii >= 0.*-0.1"):
        robustness(model, (x, y), eps=[0.1, -0.1], n=24)
    with pytest.raises(ConfigError, match="attack='fgsm' is not accepted.*'apgd-ce', 'apgd-t', 'autoattack', 'autoattack-cheap'"):
        robustness(model, (x, y), attack="fgsm", n=24)
    with pytest.raises(ConfigError, match="norm='L3' is not accepted.*'Linf', 'L2'"):
        robustness(model, (x, y), norm="L3", n=24)
    with pytest.raises(ValueError, match="n=100 but the data hold only 24 examples"):
        robustness(model, (x, y), n=100)
    with pytest.raises(ValueError, match=r"range over \[-.*\]\. Standardized inputs: pass normalization"):
        robustness(model, (standardize(x), y), n=24)
    with pytest.raises(ValueError, match="after undoing the standardization"):
        robustness(model, (x + 1, y), n=24, normalization=(0.5, 0.5))
    with pytest.raises(ValueError, match="the data set says it was standardized"):
        robustness(model, zoo_set(standardize(x), y), n=24, normalization=(0.5, 0.5))
    with pytest.raises(ConfigError, match="standard evaluation.*autoattack-cheap"):
        robustness(model, (x, y), attack="autoattack", steps=10, n=24)
    with pytest.raises(ValueError, match="needs image inputs"):
        robustness(nn.Linear(5, 10), (torch.rand(8, 5), torch.zeros(8, dtype=torch.long)), attack="autoattack", n=8)
    with pytest.raises(ValueError, match="at least 4 classes"):
        robustness(img_model(3), (x, y % 3), attack="apgd-t", n=24, eps=[0.1])
    with pytest.raises(ConfigError, match="bn_mode='train' is not accepted"):
        robustness(model, (x, y), bn_mode="train", n=24)
    with pytest.raises(ConfigError, match="max_samples=12 conflicts with n=24"):
        robustness(model, (x, y), max_samples=12, n=24)
    with pytest.raises(ValueError, match="class-index targets"):
        robustness(model, (x, y.float()), n=24)
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    with pytest.raises(ImportError, match="pip install pyautoattack"):
        robustness(model, (x, y), eps=[0.1], n=24)


def test_options_contract():
    o = RobustnessOptions.from_dict({"eps": [0, 1], "norm": "linf", "normalization": [[0.5, 0.4, 0.3], 0.25]})
    assert o.eps == (0.0, 1.0) and o.norm == "Linf" and o.normalization == ((0.5, 0.4, 0.3), (0.25,))
    assert RobustnessOptions().radii() == (0.0, 1 / 255, 2 / 255) and RobustnessOptions(norm="L2").radii() == (0.0, 0.1, 0.2)
    assert RobustnessOptions(n=64).required_samples() == 64
    assert landscape.robustness is robustness and landscape.RobustnessOptions is RobustnessOptions


# ---------------------------------------------------------------- batch runs and the figure


def make_data(split: str = "train", n: int = 16):
    """A data factory in [0, 1] for (1, 4, 4) images, 4 classes."""
    g = torch.Generator().manual_seed({"train": 0, "test": 1}[split])
    x = torch.rand(n, 1, 4, 4, generator=g)
    return TensorDataset(x, (x.mean((1, 2, 3)) * 16).long() % 4)


@needs_pyautoattack
def test_analyze_a_checkpoint_folder_and_draw_the_figure(tmp_path):
    from landscape import plots
    from landscape.checkpoint import save_checkpoint
    from landscape.models import build_model
    from landscape.plots.cli import plot_results
    from landscape.results import open_results

    for run, steps in (("sgd", (1, 2)), ("sam", (2,))):
        for step in steps:
            torch.manual_seed(10 * step + len(run))
            m = build_model("mlp", input_shape=(1, 4, 4), num_classes=4, width=8, depth=1)
            save_checkpoint(tmp_path / "ckpts" / run / f"epoch_{step}.pt", m, step=step, epoch=step)
    opts = {"robustness": {"eps": [0, 0.05, 0.2], "n": 16, "steps": 3, "batch_size": 8}, "data": {"split": "test"}}
    summary = landscape.analyze(tmp_path / "ckpts", "robustness", data=make_data, options=opts,
                                out=tmp_path / "res", progress=False)
    assert summary.counts() == {"done": 3, "skipped": 0, "failed": 0}, summary.failed
    with pytest.raises(ConfigError, match=r"robustness needs 1000 examples.*--set robustness\.n=16\)"):
        landscape.analyze(tmp_path / "ckpts", "robustness", data=make_data, out=tmp_path / "res2", progress=False)
    ds = open_results(tmp_path / "res", "robustness")
    assert dict(ds.robust_correct.sizes) == {"run": 2, "step": 2, "eps": 3, "example": 16}
    direct_res = robustness(landscape.load_checkpoint(tmp_path / "ckpts" / "sam" / "epoch_2.pt").model,
                            make_data("test"), eps=[0, 0.05, 0.2], n=16, steps=3, batch_size=8)
    np.testing.assert_array_equal(ds.robust_correct.sel(run="sam", step=2).values.astype(bool),
                                  direct_res.robust_correct.values)
    fig = plots.robust_accuracy_vs_eps(ds)
    ax = fig.axes[0]
    assert ax.get_xlabel() == r"$\ell_\infty$ radius $\epsilon$ (in 1/255)" and ax.get_ylabel() == "accuracy (%)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["sam", "sgd"]
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), [0, 0.05 * 255, 0.2 * 255])
    np.testing.assert_allclose(line.get_ydata()[0], 100 * float(ds.clean_accuracy.sel(run="sam", step=2)))
    single = plots.robust_accuracy_vs_eps(direct_res)  # one result, not combined
    assert single.axes[0].get_legend().get_texts()[0].get_text() == "model"
    written, failures = plot_results(tmp_path / "res", tmp_path / "fig", analyses="robustness", formats=("png",))
    assert not failures and [p.name for p in written] == ["robustness_eps.png"]
    with pytest.raises(plots.PlotError, match="needs a 'robustness' result"):
        plots.robust_accuracy_vs_eps(ds.drop_vars("robust_accuracy"))


# ---------------------------------------------------------------- the ResNet-18 in the pyautoattack wheel


MODEL_TEST = Path(pyaa.__file__).parent / "examples" / "model_test.pt" if pyaa is not None else None


@needs_pyautoattack
def test_third_party_resnet18_loads_and_is_analysed():
    """A CUDA-saved bare state_dict (legacy, non-zip torch format) through the foreign-checkpoint
    path into the zoo's resnet18_cifar; norm_params, feature_rank and a short apgd-ce run on
    synthetic CIFAR-shaped images in [0, 1]."""
    from landscape.analyses.feature_rank import RankCappedWarning

    if MODEL_TEST is None or not MODEL_TEST.is_file():
        pytest.skip(f"{MODEL_TEST} is not part of this pyautoattack installation")
    ckpt = landscape.load_checkpoint(MODEL_TEST, model="resnet18_cifar")
    assert ckpt.layout == "state_dict" and sum(p.numel() for p in ckpt.model.parameters()) == 11_173_962
    assert all(t.device.type == "cpu" for t in ckpt.model.state_dict().values())
    norms = landscape.norm_params(ckpt.model)
    assert norms.sizes["layer"] == 20
    g = torch.Generator().manual_seed(1)
    feats = TensorDataset(torch.rand(16, 3, 32, 32, generator=g), torch.zeros(16, dtype=torch.long))
    with pytest.warns(RankCappedWarning, match="capped by n"):  # 16 examples <= 512 features
        ranks = landscape.feature_rank(ckpt.model, feats, n=16, layers=["B4", "penultimate"], batch_size=16)
    assert ranks.feature_dim.values.tolist() == [512 * 4 * 4, 512]
    assert ranks.capped_by_n.values.tolist() == [1, 1]
    assert all(1 <= int(r) <= 17 for r in ranks["rank"].values)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g)
    with torch.no_grad():
        y = ckpt.model(x).argmax(1)
    res = robustness(ckpt.model, (x, y), eps=[0, 8 / 255], n=4, steps=2, batch_size=4)
    assert float(res.clean_accuracy) == 1.0 and res.attrs["num_classes"] == 10
    assert 0 <= float(res.robust_accuracy.sel(eps=8 / 255)) <= 1.0
    assert json.loads(res.attrs["autoattack_checks"]) == []


@needs_pyautoattack
@pytest.mark.slow
def test_standard_autoattack_agrees_with_pyautoattack_run_directly():
    """attack="autoattack" is AutoAttack's standard version (apgd-ce, apgd-t, fab-t, square)."""
    model = img_model()
    x, y = img_data(model)
    ours = robustness(model, (x[:8], y[:8]), attack="autoattack", eps=[2 / 255], n=8, batch_size=8)
    aa = pyaa.AutoAttack(copy.deepcopy(model).eval(), device="cpu", eps=2 / 255, norm="Linf", seed=0, version="standard")
    _, y_adv = aa.run_standard_evaluation(x[:8], y[:8], batch_size=8)
    np.testing.assert_array_equal(ours.robust_correct.values[0], (y_adv == y[:8]).numpy())
    assert json.loads(ours.attrs["attacks_run"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert float(ours.robust_accuracy[0]) > 0  # examples were left for fab-t and square


@needs_pyautoattack
def test_readme_example_runs_as_written():
    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text[text.index("### Adversarial robustness (`landscape.robustness`)"):]
    block = section[section.index("```python\n# robust.py") + len("```python\n"):]
    block = block[: block.index("```")]
    scope: dict = {}
    exec(compile(block, "README.md:robust.py", "exec"), scope)  # noqa: S102 - our own README
    res = scope["res"]
    assert res.robust_accuracy.sizes == {"eps": 4} and scope["survived"].sizes == {"example": 64}
    assert float(res.robust_accuracy.sel(eps=0)) == float(res.clean_accuracy)
