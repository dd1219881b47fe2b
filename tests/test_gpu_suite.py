"""bench/gpu_suite.py: the toy-size run prints every part with finite numbers; the FLOP counts
behind its floor are exact on a model whose FLOPs are known in closed form."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_suite.py"
LINE = re.compile(r"^part (\w+): time (\S+) s, peak memory (n/a|\S+ GiB), floor (\S+) s, ratio (\S+)  \[", re.M)


def _module():
    spec = importlib.util.spec_from_file_location("gpu_suite", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_suite") / "suite.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_tiny_prints_every_part_with_finite_time_memory_floor_and_ratio(tiny_run):
    stdout, out = tiny_run
    rows = {r["part"]: r for r in out["parts"]}
    found = {m.group(1): m.groups()[1:] for m in LINE.finditer(stdout)}
    assert list(found) == list(_module().PARTS), stdout
    for part, (secs, mem, floor, ratio) in found.items():
        assert math.isfinite(float(secs)) and float(secs) > 0, (part, secs)
        # The CPU has no honest per-part peak-memory measure: "n/a" there, GiB on CUDA.
        assert mem == "n/a" if not torch.cuda.is_available() else mem.endswith("GiB"), (part, mem)
        assert math.isfinite(float(floor)) and float(floor) > 0, (part, floor)
        assert math.isfinite(float(ratio)) and float(ratio) > 0, (part, ratio)
        # The printed figures are rounded (a tiny part's time to 1 ms), so the ratio is checked
        # against the unrounded numbers of the JSON written by the same run.
        r = rows[part]
        assert r["ratio"] == pytest.approx(r["seconds"] / r["floor_seconds"], rel=1e-12), part
        assert float(ratio) == pytest.approx(r["ratio"], rel=5e-3), part
        assert float(secs) == pytest.approx(r["seconds"], abs=5e-4) and float(floor) == pytest.approx(
            r["floor_seconds"], rel=5e-3), part


def test_tiny_json_floor_follows_the_calls_the_analyses_made(tiny_run):
    _, out = tiny_run
    rows = {r["part"]: r for r in out["parts"]}
    assert out["fp32_matmul_tflops"] > 0 and out["copy_gbytes_per_s"] > 0
    hess = rows["hessian"]
    # "N HVPs (method) of b = a eigenvalues+t trace+d density full-data HVPs": per-batch HVPs are
    # the full-data ones times the batches (hess_n / hess_batch).
    size = out["size"]
    n_batch, rest = re.match(r"(\d+) HVPs \(\S+\) of \d+ = (.*) full-data", hess["what"]).groups()
    full = sum(int(t.split()[0]) for t in rest.split("+"))
    assert int(n_batch) == full * size["hess_n"] // size["hess_batch"]
    assert "| hessian |" in out["table"] and "| norm_params |" in out["table"]


def test_unit_costs_are_the_closed_form_flops_of_a_two_layer_mlp():
    gs = _module()
    d, h, c, b = 6, 5, 3, 8
    model = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c))
    x, y = torch.randn(b, d), torch.randint(0, c, (b,))
    costs = gs.UnitCosts(model, x, y, torch.device("cpu"))
    fwd = 2 * b * (d * h + h * c)
    assert costs.forward(b) == fwd
    # Backward: both weight gradients plus the input gradient of the second layer (the first
    # layer's input needs none).
    assert costs.forward_backward(b) == fwd + 2 * b * (d * h + 2 * h * c)
    # A recomputed HVP redoes the gradient with its graph, then differentiates it once more.
    assert costs.hvp(b, "double-backward") > costs.forward_backward(b)
    assert costs.hvp(b, "retained-graph") < costs.hvp(b, "double-backward")


def test_bad_part_is_refused_with_the_accepted_names(capsys):
    gs = _module()
    with pytest.raises(SystemExit):
        gs.main(["--tiny", "--parts", "hessian,bogus"])
    err = capsys.readouterr().err
    assert "bogus" in err and "feature_rank" in err


def test_estimate_plans_the_calls_the_tiny_run_made(tiny_run, capsys):
    """--estimate's call counts (from the options alone) are the ones the analyses really made:
    equal for sharpness, an upper bound for the Hessian (Lanczos may stop before max_steps)."""
    _, out = tiny_run
    gs = _module()
    plan = {r["part"]: r for r in gs.estimate(gs.TINY)}
    capsys.readouterr()
    rows = {r["part"]: r for r in out["parts"]}
    assert plan["sharpness"]["what"] == rows["sharpness"]["what"]
    planned = int(re.match(r"<= (\d+) full-data HVPs", plan["hessian"]["what"]).group(1))
    full = re.match(r"\d+ HVPs \(\S+\) of \d+ = (.*) full-data", rows["hessian"]["what"]).group(1)
    assert sum(int(t.split()[0]) for t in full.split("+")) <= planned
    n_fwd, batch = map(int, re.match(r"(\d+) fwd of (\d+)", rows["slice"]["what"]).groups())
    assert n_fwd * batch == gs.TINY.slice_points**2 * gs.TINY.slice_n
    assert plan["slice"]["what"].startswith(f"{gs.TINY.slice_points}^2 x {gs.TINY.slice_n} ")
    assert all(math.isfinite(r["tflop"]) and r["tflop"] > 0 for r in plan.values())
