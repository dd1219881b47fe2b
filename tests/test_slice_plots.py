"""Loss-landscape figures: drawn from Datasets of the slice result schema (INTERFACES.md) and
checked against the numbers they were drawn from (grid orientation, marked points, labels).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

from landscape import plots
from landscape.plots.common import PlotError
from landscape.plots.slices import _points, slice_figures, slice_grid

PNG = b"\x89PNG\r\n\x1a\n"
PDF = b"%PDF-"


def synthetic_slice(ndim=2, kind="random", *, alpha=None, beta=None, points=None, accuracy=True,
                    variance=None, run=None, norms=(3.0, 4.0)) -> xr.Dataset:
    """A Dataset of the slice schema: loss = 0.3 + a^2 + 2 b^2 + 0.5 a b (a, b = alpha, beta)."""
    alpha = np.linspace(-1, 1, 11) if alpha is None else np.asarray(alpha, float)
    beta = np.linspace(-1, 1, 7) if beta is None else np.asarray(beta, float)
    dirs = ["d1"] if ndim == 1 else ["d1", "d2"]
    coords = {"alpha": alpha, "direction": dirs}
    if ndim == 1:
        loss = 0.3 + alpha ** 2
        dims = ("alpha",)
    else:
        A, B = np.meshgrid(alpha, beta, indexing="ij")
        loss = 0.3 + A ** 2 + 2 * B ** 2 + 0.5 * A * B
        dims = ("alpha", "beta")
        coords["beta"] = beta
    data = {
        "loss": (dims, loss, {"long_name": "loss on the slice", "units": "nats"}),
        "direction_norm": (("direction",), np.asarray(norms[:ndim], float), {"units": "1"}),
        "centre_loss": ((), 0.3, {"units": "nats"}),
    }
    if accuracy:
        data["accuracy"] = (dims, np.clip(1 - loss / loss.max(), 0, 1), {"long_name": "accuracy", "units": "1"})
        data["centre_accuracy"] = ((), float(1 - 0.3 / loss.max()))
    if ndim == 2:
        data["cos_d1_d2"] = ((), 0.01)
    if points:
        labels, steps, pa = [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]
        data["point_alpha"] = (("point",), np.asarray(pa, float))
        if ndim == 2:
            data["point_beta"] = (("point",), np.asarray([p[3] for p in points], float))
        coords["point_label"] = ("point", labels)
        coords["point_step"] = ("point", np.asarray(steps, int))
    if variance is not None:
        data["explained_variance"] = (("direction",), np.asarray(variance, float))
    ds = xr.Dataset(data, coords=coords, attrs={
        "analysis": "slice", "ndim": ndim, "bn_mode": "eval", "direction_kind": kind,
        "normalization": "filter", "one_d": "ignore", "config_json": "{}", "loss": "ce", "loss_units": "nats"})
    if run is not None:
        ds = ds.expand_dims(run=[run], step=[10])
    return ds


def _axes_labelled(fig: Figure) -> None:
    drawn = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.get_visible()]
    assert drawn
    for ax in drawn:
        # a twin axis (interpolation's accuracy) shares the x label of its sibling
        xlabel = ax.get_xlabel() or any(o.get_xlabel() for o in ax.get_shared_x_axes().get_siblings(ax))
        assert xlabel and ax.get_ylabel(), (ax.get_xlabel(), ax.get_ylabel())
        if hasattr(ax, "get_zlabel"):
            assert ax.get_zlabel()


def test_slice_grid_keeps_alpha_beta_orientation_on_a_non_square_grid():
    ds = synthetic_slice(alpha=np.linspace(-1, 1, 5), beta=np.linspace(-2, 2, 9))
    a, b, z = slice_grid(ds)
    assert z.shape == (9, 5)  # rows = beta (y), columns = alpha (x)
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            assert z[j, i] == pytest.approx(0.3 + ai ** 2 + 2 * bj ** 2 + 0.5 * ai * bj)


def test_contour_labels_levels_marks_centre_and_points(tmp_path):
    pts = [("A", 0, 0.0, 0.0), ("B", 5, 1.0, 0.0), ("C", 9, 0.0, 1.0)]
    ds = synthetic_slice(kind="plane", points=pts)
    fig = plots.slice_contour(ds)
    _axes_labelled(fig)
    ax = fig.axes[0]
    assert "B - A" in ax.get_xlabel() and "C - A" in ax.get_ylabel()
    assert r"\|d_1\|" in ax.get_xlabel() and "3" in ax.get_xlabel()
    texts = [t.get_text() for t in ax.texts]
    assert any("A" in t for t in texts) and any("B (step 5)" in t for t in texts) and any("C (step 9)" in t for t in texts)
    # contour level labels (clabel) are numbers
    assert any(t.replace(".", "", 1).isdigit() for t in texts)
    # the checkpoints are drawn where the result says
    offsets = np.concatenate([c.get_offsets() for c in ax.collections if hasattr(c, "get_offsets")
                              and len(c.get_offsets()) == 3])
    np.testing.assert_allclose(sorted(map(tuple, offsets)), sorted([(0, 0), (1, 0), (0, 1)]))
    assert "nats" in fig.axes[-1].get_ylabel()  # the colorbar
    files = plots.save(fig, tmp_path / "contour")
    assert files[0].read_bytes().startswith(PNG) and files[1].read_bytes().startswith(PDF)


def test_random_contour_marks_centre_and_log_levels():
    ds = synthetic_slice()
    fig = plots.slice_contour(ds, log=True, levels=8)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith(r"$\alpha$ (direction d1")
    centre = [c for c in ax.collections if hasattr(c, "get_offsets") and len(c.get_offsets()) == 1]
    np.testing.assert_allclose(centre[0].get_offsets(), [[0.0, 0.0]])
    cf = next(c for c in ax.collections if getattr(c, "filled", False))
    lv = np.asarray(cf.levels)
    assert len(lv) == 8 and lv[0] == pytest.approx(0.3) and np.allclose(np.diff(np.log(lv)), np.log(lv[1] / lv[0]))
    assert "log scale" in fig.axes[-1].get_ylabel()
    with pytest.raises(PlotError, match="log=True"):
        plots.slice_contour(synthetic_slice().assign(loss=lambda d: d.loss - 10), log=True)


def test_surface_has_three_labelled_axes():
    fig = plots.slice_surface(synthetic_slice(), log=True)
    _axes_labelled(fig)
    ax = fig.axes[0]
    assert "loss (nats)" in ax.get_zlabel() and r"$\beta$" in ax.get_ylabel()


def test_curves_overlay_runs_with_one_color_each():
    sgd = synthetic_slice(1, run="sgd")
    sam = synthetic_slice(1, run="sam", alpha=np.linspace(-2, 2, 9), norms=(5.0,))
    sam["loss"] = sam["loss"] * 0.5
    fig = plots.slice_curves({"sgd": sgd, "sam": sam}, colors={"sgd": "#000000"})
    _axes_labelled(fig)
    assert len(fig.axes) == 2  # loss and accuracy panels
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label() != "_nolegend_"]
    by = {ln.get_label().split(" ")[0]: ln for ln in lines}
    assert set(by) == {"sgd", "sam"} and by["sgd"].get_color() == "#000000"
    np.testing.assert_allclose(by["sam"].get_xdata(), np.linspace(-2, 2, 9))  # its own grid, no NaN
    np.testing.assert_allclose(by["sam"].get_ydata(), 0.5 * (0.3 + np.linspace(-2, 2, 9) ** 2))
    assert "5" in by["sam"].get_label() and fig.axes[0].get_ylabel() == "loss (nats)"
    # the same from a Dataset combined over runs (open_results' layout)
    both = xr.concat([sgd, sam], dim="run", join="outer", coords="different", compat="equals")
    fig2 = plots.slice_curves(both, metrics=("loss",), log=True)
    assert len(fig2.axes) == 1 and fig2.axes[0].get_yscale() == "log"


def test_interpolation_curves_two_axes_and_ends():
    pts = [("epoch_0001", 1, 0.0), ("epoch_0002", 2, 1.0)]
    ds = synthetic_slice(1, "interpolation", alpha=np.linspace(-0.5, 1.5, 9), points=pts)
    fig = plots.interpolation_curves(ds)
    _axes_labelled(fig)
    ax, ax2 = fig.axes
    assert "loss (nats)" in ax.get_ylabel() and "accuracy" in ax2.get_ylabel()
    assert "0 = epoch_0001" in ax.get_xlabel() and "1 = epoch_0002" in ax.get_xlabel()
    assert {t.get_text() for t in ax.texts} == {"epoch_0001", "epoch_0002"}
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), ds.loss.values)
    np.testing.assert_allclose(ax2.get_lines()[0].get_ydata(), ds.accuracy.values)
    # two runs (pairs) with their own end labels, combined as open_results does
    other = synthetic_slice(1, "interpolation", alpha=np.linspace(-0.5, 1.5, 9),
                            points=[("sam_1", 1, 0.0), ("sam_2", 2, 1.0)]).expand_dims(run=["sam"], step=[2])
    both = xr.concat([ds.expand_dims(run=["sgd"], step=[2]), other], dim="run", coords="different", compat="equals")
    ax = plots.interpolation_curves(both).axes[0]
    assert {t.get_text() for t in ax.texts} == {"epoch_0001 / sam_1", "epoch_0002 / sam_2"}
    assert len([ln for ln in ax.get_lines() if ln.get_label().endswith("loss")]) == 2


def test_trajectory_plane_in_step_order_with_variance():
    # stored out of order: the path must follow the steps
    pts = [("epoch_0003", 30, 0.0, 0.0), ("epoch_0001", 10, -0.8, 0.5), ("epoch_0002", 20, -0.3, 0.2)]
    ds = synthetic_slice(2, "trajectory", points=pts, variance=(0.71, 0.2))
    assert [p[1] for p in _points(ds)] == [10, 20, 30]
    fig = plots.trajectory_plane(ds)
    _axes_labelled(fig)
    ax = fig.axes[0]
    assert "71.0 % of variance" in ax.get_xlabel() and "20.0 % of variance" in ax.get_ylabel()
    path = next(ln for ln in ax.get_lines())
    np.testing.assert_allclose(path.get_xdata(), [-0.8, -0.3, 0.0])
    np.testing.assert_allclose(path.get_ydata(), [0.5, 0.2, 0.0])
    arrows = [t for t in ax.texts if getattr(t, "arrow_patch", None) is not None]
    assert len(arrows) == 2
    with pytest.raises(PlotError, match="point_alpha"):
        plots.trajectory_plane(synthetic_slice(2, "trajectory"))


def test_several_runs_one_panel_each_and_bad_input():
    both = xr.concat([synthetic_slice(run="sgd"), synthetic_slice(run="sam")], dim="run", coords="different", compat="equals")
    fig = plots.slice_contour(both, colors={"sam": "#D55E00", "sgd": "#0072B2"})
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert sorted(ax.get_title() for ax in titled) == ["sam, step 10", "sgd, step 10"]
    assert fig.axes[0].title.get_color() == "#0072B2"
    assert len(plots.slice_contour(both, run="sam").axes) == 2  # one panel + its colorbar
    with pytest.raises(PlotError, match="'adam'"):
        plots.slice_contour(both, run="adam")
    with pytest.raises(PlotError, match="step=99"):
        plots.slice_contour(both, step=99)
    with pytest.raises(PlotError, match="'slice' result"):
        plots.slice_contour(synthetic_slice(1))
    with pytest.raises(PlotError, match="'slice' result"):
        plots.slice_curves(xr.Dataset({"loss": ("alpha", [1.0])}, attrs={"analysis": "hessian"}))


def test_slice_figures_chosen_by_ndim_and_kind():
    assert list(slice_figures(synthetic_slice(1))) == ["slice_1d"]
    assert list(slice_figures(synthetic_slice(1, "interpolation"))) == ["slice_interpolation"]
    assert list(slice_figures(synthetic_slice(2, "plane"))) == ["slice_contour", "slice_surface"]
    assert list(slice_figures(synthetic_slice(2, "trajectory"))) == ["slice_trajectory", "slice_surface"]


def _write(ds, out, run, step, hash_):
    from landscape.results import result_path, write_result

    path = result_path(out, run, f"epoch_{step:04d}.pt", "slice", hash_)
    return write_result(ds, path, analysis="slice", run=run, step=step, checkpoint=f"epoch_{step:04d}.pt",
                        checkpoint_sha256="0" * 64, options_hash=hash_, config_json=ds.attrs["config_json"])


def test_landscape_plot_draws_the_figures_each_result_calls_for(tmp_path, capsys):
    from landscape.plots.cli import plot_results

    res = tmp_path / "results"
    one_d = synthetic_slice(1)
    for run in ("sgd", "sam"):
        _write(one_d, res, run, 2, "1111111111")
    plane = synthetic_slice(2, "plane", points=[("A", 0, 0.0, 0.0), ("B", 1, 1.0, 0.0), ("C", 2, 0.0, 1.0)])
    plane.attrs["config_json"] = '{"kind": "plane"}'
    _write(plane, res, "sgd", 2, "2222222222")
    interp = synthetic_slice(1, "interpolation", points=[("A", 0, 0.0), ("B", 1, 1.0)])
    interp.attrs["config_json"] = '{"kind": "interpolation"}'
    _write(interp, res, "sgd", 2, "3333333333")
    written, failures = plot_results(res, tmp_path / "fig", analyses="slice", formats=("png",))
    assert not failures
    names = sorted(p.name for p in written)
    assert names == ["slice_1d-1111111111.png", "slice_contour-2222222222.png",
                     "slice_interpolation-3333333333.png", "slice_surface-2222222222.png"]
    for p in written:
        assert p.read_bytes().startswith(PNG)


# ------------------------------------------------------------------ from real slice results


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Real ``loss_slice`` results of tiny models (every kind the figures draw), written and read
    back through landscape.results as `landscape analyze` / `landscape slice` do."""
    import torch

    from landscape import directions as D
    from landscape.analyses.slices import loss_slice
    from landscape.models import build_model
    from landscape.results import open_results, read_result

    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    models = [build_model("mlp", input_shape=(4,), num_classes=3, width=5, norm="batch").eval() for _ in range(3)]
    kw = dict(progress=False, batch_size=32)
    out = tmp_path_factory.mktemp("real")
    made = {}
    for run, m in zip(("sgd", "sam"), models[:2]):
        d = D.random_direction(m, seed=0)
        _write(loss_slice(m, (x, y), d, grid="-1:1:5", direction_kind="random", normalization="filter",
                          one_d="ignore", **kw), out / "one_d", run, 3, "1111111111")
    made["1d"] = open_results(out / "one_d", "slice")
    pair = [D.random_direction(models[0], seed=s) for s in (1, 2)]
    made["2d"] = read_result(_write(loss_slice(models[0], (x, y), pair, grid=["-1:1:5", "-0.5:0.5:3"],
                                               direction_kind="random", normalization="filter", one_d="ignore",
                                               **kw), out / "two_d", "sgd", 3, "2222222222"))
    made["interpolation"] = read_result(_write(loss_slice(
        models[0], (x, y), D.checkpoint_direction(models[0], models[1]), grid="-0.5:1.5:5",
        points={"A": {"alpha": 0.0, "step": 1}, "B": {"alpha": 1.0, "step": 2}}, direction_kind="interpolation",
        **kw), out / "interp", "sgd", 1, "3333333333"))
    made["plane"] = read_result(_write(loss_slice(
        models[0], (x, y), D.plane(*models, labels=("A", "B", "C")), grid="-0.5:1.5:5", direction_kind="plane",
        **kw), out / "plane", "sgd", 1, "4444444444"))
    if hasattr(D, "trajectory_pca"):
        pl = D.trajectory_pca(models, centre=-1, steps=[1, 2, 3])
        made["trajectory"] = read_result(_write(loss_slice(models[2], (x, y), pl, grid=5, direction_kind="trajectory",
                                                           **kw), out / "traj", "sgd", 3, "5555555555"))
    return made


def test_every_figure_renders_from_a_real_slice_result(real, tmp_path):
    draws = [
        (plots.slice_curves, real["1d"]),
        (plots.interpolation_curves, real["interpolation"]),
        (plots.slice_contour, real["2d"]),
        (plots.slice_surface, real["2d"]),
        (plots.slice_contour, real["plane"]),
    ]
    if "trajectory" in real:
        draws.append((plots.trajectory_plane, real["trajectory"]))
    for fn, ds in draws:
        _axes_labelled(fn(ds))
    # one of them written (saving is the slow part; every figure is saved by the CLI tests)
    assert plots.save(fn(ds), tmp_path / "fig", ("png",))[0].read_bytes().startswith(PNG)
    # the combined 1-D folder: one line per run, each the stored values
    fig = plots.slice_curves(real["1d"], metrics=("loss",))
    lines = {ln.get_label().split(" ")[0]: ln for ln in fig.axes[0].get_lines() if ln.get_label() != "_nolegend_"}
    assert set(lines) == {"sam", "sgd"}
    for run, ln in lines.items():
        np.testing.assert_allclose(ln.get_ydata(), real["1d"].loss.sel(run=run, step=3).values)
    # interpolation: both axes labelled with units; the ends where the result puts them
    ax = plots.interpolation_curves(real["interpolation"]).axes[0]
    assert "loss (nats)" in ax.get_ylabel() and "0 = A, 1 = B" in ax.get_xlabel()
    # the plane: the three checkpoints marked at their stored coordinates
    ax = plots.slice_contour(real["plane"]).axes[0]
    texts = {t.get_text() for t in ax.texts}
    assert {"A", "B", "C"} <= {t.split(" ")[0] for t in texts}
    assert list(slice_figures(real["plane"])) == ["slice_contour", "slice_surface"]
    assert list(slice_figures(real["interpolation"])) == ["slice_interpolation"]
