"""The whole analysis suite on one device: a WRN-28-10 checkpoint, each part against its FLOP floor.

One command builds a WideResNet-28-10 (zoo model ``wrn``, 36.5M parameters), trains it for a few
hundred SGD steps (CIFAR-10 from ``$LANDSCAPE_DATA`` when that folder holds it, else seeded
CIFAR-shaped synthetic clusters) and runs, on one device, through the public API:

=============  =====================================================================================
part           call
=============  =====================================================================================
sharpness      ``landscape.sharpness``: adaptive l-inf worst case, n=2048, m=128, 20 steps, 3 radii
hessian        ``landscape.hessian_spectrum``: top-5 (Lanczos) + trace + SLQ density on 2,048 samples
slice          ``landscape.slice_analysis``: 51 x 51 filter-normalized random plane on 2,048 samples
feature_rank   ``landscape.feature_rank``: penultimate-layer rank on 10,240 samples
norm_params    ``landscape.norm_params``: gamma/beta statistics
=============  =====================================================================================

For each part (and for the training that makes the checkpoint) it prints the wall time, the peak
device memory, the **floor** and the ratio wall / floor. The floor is the time the part's model
evaluations would take at the device's measured matmul throughput:

* FLOPs of one forward, one forward+backward and one HVP of the model on one batch of the part's
  batch size are counted with ``torch.utils.flop_counter.FlopCounterMode`` (the HVP by the method
  the analysis resolved, e.g. recomputed double-backward);
* each is multiplied by how many the part performed, read from the result's attributes
  (``calls_grad``, ``calls_hvp``, ``calls_loss`` + ``calls_logits``: one count per batch), so the
  floor follows what the analysis really did (Lanczos steps taken, Auto-PGD calls, ...);
* the sum is divided by the throughput of a large square matmul timed on the device in the
  precision the part computes in (float32 with TF32 off unless ``--tf32``; bf16 for the
  forward-only parts under ``--bf16``).

``norm_params`` evaluates no model: its floor is reading its parameters once at the device's
measured copy bandwidth.

Peak memory is ``torch.cuda.max_memory_allocated`` per part on CUDA; on the CPU there is no honest
per-part measure (the process's maximum resident size only grows), so it prints ``n/a``.

Expected device memory at full size (P = 36.5M parameters, float64 vectors 292 MB each), chosen
to fit one 80 GB GPU:

* hessian: the Lanczos basis is float64, ``steps x P x 8`` bytes (292 MB a row), preallocated
  for ``min(steps, 64)`` rows and doubled when full (the old and the new block coexist while it
  is copied). ``max_steps=64`` and ``slq_steps=64`` keep the eigenvalue run and each SLQ run to
  one 64-row block, 18.7 GB (the defaults 100 / 90 would double it at step 65). The default
  trace (``trace_deflation="lanczos"``) continues the eigenvalue run by ``trace_samples // 3``
  (33) steps and keeps that basis for the SLQ reuse: up to 64 + 33 = 97 rows, so the block
  doubles to 128 rows (37.4 GB, 56 GB during the copy) and stays alive while the other SLQ runs
  build their own 64-row basis (37.4 + 18.7 GB). The HVPs (recomputed double-backward on batches
  of 128) keep the graph of a gradient: roughly 3x the activations of a training step, ~12 GB at
  128 images of 32x32. Expected Hessian peak: roughly 65-70 GB: within 80 GB narrowly,
  comfortably on a 141 GB H200; ``--trace-samples`` lower (or a Lanczos run that converges
  before 31 steps) keeps the kept basis within one 64-row block.
* sharpness: a handful of P-vectors (Auto-PGD's iterate, best point, gradient: < 2 GB) plus one
  training-step's activations at m=128 (~4 GB).
* slice, feature_rank: no-grad forwards at batch 256 (a few GB), two directions (292 MB).

Sizes: the full run is many minutes of GPU time (the Hessian part dominates in float32); run
parts separately with ``--parts``. ``--tiny`` is the same code at toy size (WRN-10-1 on 8x8
inputs, a 5 x 5 grid, a few hundred samples) and finishes in seconds on a CPU; the tests run it.

Usage:
    .venv/bin/python bench/gpu_suite.py --device cuda --out bench/gpu_suite.md     # the whole suite
    .venv/bin/python bench/gpu_suite.py --device cuda --parts hessian              # one part
    .venv/bin/python bench/gpu_suite.py --tiny                                     # CPU smoke run
    .venv/bin/python bench/gpu_suite.py --estimate     # planned FLOPs per part (meta device), any machine

``--out PATH`` writes the table (``.md``) or the numbers (``.json``, any other suffix: both,
``PATH.json`` and ``PATH.md``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import landscape
from landscape.atomic import atomic_write_text
from landscape.objective import Objective

PARTS = ("train", "sharpness", "hessian", "slice", "feature_rank", "norm_params")
ANALYSES = PARTS[1:]


@dataclass(frozen=True)
class Size:
    """Every size of the suite (the issue's at full size)."""

    depth: int = 28
    widen: int = 10
    image: int = 32
    train_steps: int = 300
    train_batch: int = 128
    lr: float = 0.1
    sharp_n: int = 2048
    sharp_m: int = 128
    sharp_steps: int = 20
    rhos: tuple[float, ...] = (0.001, 0.002, 0.005)
    hess_n: int = 2048
    hess_batch: int = 128
    hess_max_steps: int = 64
    trace_samples: int = 100
    slq_runs: int = 10
    slq_steps: int = 64
    slice_n: int = 2048
    slice_points: int = 51
    slice_batch: int = 256
    rank_n: int = 10240
    rank_batch: int = 256
    matmul_n: int = 8192


FULL = Size()
TINY = Size(depth=10, widen=1, image=8, train_steps=10, train_batch=32, lr=0.05, sharp_n=32, sharp_m=16,
            sharp_steps=3, hess_n=32, hess_batch=16, hess_max_steps=15, trace_samples=6, slq_runs=2, slq_steps=8,
            slice_n=32, slice_points=5, slice_batch=32, rank_n=64, rank_batch=32, matmul_n=256)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def supported(fn: Callable, **kw) -> dict:
    """The keywords of ``kw`` that ``fn`` takes: ``device=`` / ``tf32=`` / ``autocast=`` where an
    analysis offers them (without ``device=`` the data is staged on the model's device, which
    is already ``--device``)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kw.items() if k in params and v is not None}


# ----------------------------------------------------------------------------- device throughput
def matmul_flops_per_second(device: torch.device, dtype: torch.dtype, n: int, reps: int = 10) -> float:
    """Best of ``reps`` timed ``n x n @ n x n`` products (2 n^3 FLOPs each) after a warm-up."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def copy_bytes_per_second(device: torch.device, n: int, reps: int = 10) -> float:
    """Best of ``reps`` timed clones of ``n^2`` float32 (bytes read + written per second)."""
    a = torch.ones(n * n, device=device)
    a.clone()
    sync(device)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a.clone()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * a.numel() * a.element_size() / best


# ----------------------------------------------------------------------------- FLOPs per call
def counted(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


class UnitCosts:
    """FLOPs of one forward / forward+backward / HVP of ``model`` on one batch of ``b`` examples,
    counted once per (kind, b, method) on the real device and inputs."""

    def __init__(self, model, x, y, device):
        self.model, self.x, self.y, self.device = model, x, y, device
        self.cache: dict[tuple, int] = {}

    def _obj(self, b: int) -> Objective:
        return Objective(self.model, (self.x[:b], self.y[:b]), batch_size=b)

    def forward(self, b: int, autocast: str | None = None) -> int:
        key = ("fwd", b, autocast)
        if key not in self.cache:
            obj = self._obj(b)

            def fwd():
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast == "bf16"):
                    obj.logits(batch=0)

            self.cache[key] = counted(fwd)
        return self.cache[key]

    def forward_backward(self, b: int) -> int:
        key = ("fwdbwd", b)
        if key not in self.cache:
            obj = self._obj(b)
            self.cache[key] = counted(lambda: obj.loss_and_grad(obj.theta0, 0))
        return self.cache[key]

    def hvp(self, b: int, method: str) -> int:
        key = ("hvp", b, method)
        if key not in self.cache:
            obj = self._obj(b)
            op = obj.hvp_operator(batch=0, method=method)
            v = torch.randn(obj.numel, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(self.device)
            op(v)  # a retained graph is built on the first product; count a later one
            self.cache[key] = counted(lambda: op(v))
        return self.cache[key]


# Nominal dense peaks of the target GPUs (datasheets; used only by --estimate, never as a measure).
NOMINAL_TFLOPS = {"H100 SXM float32": 67.0, "H100 SXM TF32": 495.0, "H100 SXM bf16": 990.0}


def meta_costs(size: Size) -> dict[str, float]:
    """FLOPs per example of a forward, forward+backward and recomputed double-backward HVP of the
    suite's model, counted on the ``meta`` device (no memory, no arithmetic: any size on a laptop)."""
    with torch.device("meta"):
        model = landscape.build_model("wrn", input_shape=(3, size.image, size.image), num_classes=10,
                                      depth=size.depth, widen_factor=size.widen)
    model.eval()
    b = 8
    x = torch.randn(b, 3, size.image, size.image, device="meta")
    y = torch.randint(0, 10, (b,), device="meta")
    params = list(model.parameters())

    def fwdbwd():
        torch.autograd.grad(F.cross_entropy(model(x), y), params)

    def hvp():
        g = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
        torch.autograd.grad(g, params, [torch.ones_like(p) for p in params])

    return {"fwd": counted(lambda: model(x)) / b, "fwdbwd": counted(fwdbwd) / b, "hvp": counted(hvp) / b,
            "parameters": sum(p.numel() for p in params)}


def estimate(size: Size) -> list[dict]:
    """Planned FLOPs per part from the options alone (call counts as the analyses make them;
    Lanczos at its ``max_steps`` budget, an upper bound), and the floor at nominal peaks."""
    c = meta_costs(size)
    B = size.sharp_n // size.sharp_m
    R = len(size.rhos)
    hess_hvps = size.hess_max_steps + size.trace_samples + size.slq_runs * size.slq_steps
    plan = {
        "train": (size.train_steps * size.train_batch * c["fwdbwd"], "fp32",
                  f"{size.train_steps} SGD steps of {size.train_batch}"),
        "sharpness": ((B + B * R * size.sharp_steps) * size.sharp_m * c["fwdbwd"]
                      + (B + B * R) * size.sharp_m * c["fwd"], "fp32",
                      f"{B + B * R * size.sharp_steps} fwd+bwd, {B + B * R} fwd of {size.sharp_m}"),
        "hessian": (hess_hvps * size.hess_n * c["hvp"] + size.hess_n * c["fwd"], "fp32",
                    f"<= {hess_hvps} full-data HVPs on {size.hess_n} ({size.hess_max_steps} Lanczos + "
                    f"{size.trace_samples} trace + {size.slq_runs}x{size.slq_steps} SLQ)"),
        "slice": (size.slice_points**2 * size.slice_n * c["fwd"], "bf16-able",
                  f"{size.slice_points}^2 x {size.slice_n} example forwards"),
        "feature_rank": (size.rank_n * c["fwd"], "bf16-able", f"{size.rank_n} example forwards"),
    }
    rows = []
    for part, (flops, kind, what) in plan.items():
        fast = NOMINAL_TFLOPS["H100 SXM bf16" if kind == "bf16-able" else "H100 SXM TF32"]
        rows.append({"part": part, "tflop": flops / 1e12, "what": what,
                     "floor_s_fp32": flops / (NOMINAL_TFLOPS["H100 SXM float32"] * 1e12),
                     "floor_s_tensor_cores": flops / (fast * 1e12),
                     "tensor_cores": "bf16" if kind == "bf16-able" else "TF32"})
    print(f"# estimate (not a measurement): wrn depth {size.depth} widen {size.widen} ({c['parameters']:,} "
          f"parameters), GFLOP per example: forward {c['fwd'] / 1e9:.3g}, forward+backward {c['fwdbwd'] / 1e9:.3g}, "
          f"double-backward HVP {c['hvp'] / 1e9:.3g} (FlopCounterMode on the meta device); floors at the nominal "
          "H100 SXM dense peaks " + ", ".join(f"{k} {v:g} TFLOP/s" for k, v in NOMINAL_TFLOPS.items()) + "\n")
    print("| part | planned work | TFLOP | floor s, float32 | floor s, TF32 / bf16 |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['part']} | {r['what']} | {r['tflop']:.4g} | {r['floor_s_fp32']:.3g} | "
              f"{r['floor_s_tensor_cores']:.3g} ({r['tensor_cores']}) |")
    tot = [sum(r[k] for r in rows) for k in ("floor_s_fp32", "floor_s_tensor_cores")]
    print(f"| total | | {sum(r['tflop'] for r in rows):.4g} | {tot[0]:.0f} | {tot[1]:.0f} |")
    return rows


def calls(ds) -> dict[str, int]:
    return {k: int(ds.attrs.get(f"calls_{k}", 0)) for k in ("loss", "grad", "hvp", "logits")}


# ----------------------------------------------------------------------------- the problem
def load_data(size: Size, n: int, tiny: bool, seed: int = 0):
    """CIFAR-10 (train split, normalized) from ``$LANDSCAPE_DATA`` when it is there (full size
    only), else seeded synthetic clusters of CIFAR shape. Returns ``(x, y, description)``."""
    if not tiny and os.environ.get("LANDSCAPE_DATA"):
        try:
            ds = landscape.get_dataset("cifar10", "train").subset(n)
            return ds.x, ds.y, f"CIFAR-10 train (first {len(ds)}) from $LANDSCAPE_DATA"
        except FileNotFoundError:
            pass
    ds = landscape.get_dataset("synthetic", "train", num_samples=n, input_shape=(3, size.image, size.image),
                               num_classes=10, seed=seed)
    return ds.x, ds.y, f"synthetic Gaussian clusters {n} x 3x{size.image}x{size.image} (no CIFAR-10 in $LANDSCAPE_DATA)"


def train(model, x, y, size: Size, device: torch.device) -> dict:
    """``train_steps`` SGD steps (momentum 0.9, weight decay 5e-4) on seeded minibatches."""
    opt = torch.optim.SGD(model.parameters(), lr=size.lr, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(1)
    model.train()
    loss = torch.zeros(())
    for _ in range(size.train_steps):
        idx = torch.randint(0, len(y), (size.train_batch,), generator=g).to(device)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
    model.eval()
    return {"final_minibatch_loss": float(loss.detach())}


# ----------------------------------------------------------------------------- the parts
@dataclass
class Row:
    part: str
    seconds: float
    peak_bytes: int | None
    floor_seconds: float
    what: str
    result: str

    @property
    def ratio(self) -> float:
        return self.seconds / self.floor_seconds if self.floor_seconds > 0 else math.inf


def run_suite(args) -> dict:
    size = TINY if args.tiny else FULL
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
    torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    if args.trace_samples is not None:
        size = replace(size, trace_samples=args.trace_samples)
    parts = [p for p in PARTS if p in args.parts]
    tf32 = True if args.tf32 else None  # passed only when asked: the analyses' default is off
    fp32 = matmul_flops_per_second(device, torch.float32, size.matmul_n)
    bf16 = matmul_flops_per_second(device, torch.bfloat16, size.matmul_n) if args.bf16 else None
    bandwidth = copy_bytes_per_second(device, size.matmul_n)
    torch.manual_seed(0)
    model = landscape.build_model("wrn", input_shape=(3, size.image, size.image), num_classes=10,
                                  depth=size.depth, widen_factor=size.widen).to(device)
    P = sum(p.numel() for p in model.parameters())
    n_data = max(size.sharp_n, size.hess_n, size.slice_n, size.rank_n)
    x, y, data_desc = load_data(size, n_data, args.tiny)
    x, y = x.to(device), y.to(device)
    costs = UnitCosts(model, x, y, device)
    head = {
        "model": f"wrn depth {size.depth} widen {size.widen} ({P:,} parameters)", "parameters": P,
        "data": data_desc, "device": device_name(device), "torch": torch.__version__, "tf32": bool(args.tf32),
        "bf16_forward_parts": bool(args.bf16), "fp32_matmul_tflops": fp32 / 1e12,
        "bf16_matmul_tflops": bf16 / 1e12 if bf16 else None, "copy_gbytes_per_s": bandwidth / 1e9,
        "size": asdict(size), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    print(f"# gpu_suite: {head['model']} on {head['device']}, torch {torch.__version__}, {data_desc}")
    print(f"# measured: float32 matmul {fp32 / 1e12:.3g} TFLOP/s (TF32 {'on' if args.tf32 else 'off'})"
          + (f", bf16 matmul {bf16 / 1e12:.3g} TFLOP/s" if bf16 else "")
          + f", copy {bandwidth / 1e9:.3g} GB/s; {size.matmul_n}x{size.matmul_n} matmul", flush=True)
    rows: list[Row] = []

    def timed(fn: Callable[[], object]):
        sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        secs = time.perf_counter() - t0
        peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
        return out, secs, peak

    def add(row: Row) -> None:
        rows.append(row)
        print(format_row(row), flush=True)

    # The checkpoint every analysis needs, always trained; its row only when asked for.
    info, secs, peak = timed(lambda: train(model, x, y, size, device))
    if "train" in parts:
        floor = size.train_steps * costs.forward_backward(size.train_batch) / fp32
        add(Row("train", secs, peak, floor, f"{size.train_steps} SGD steps of {size.train_batch}",
                f"last minibatch loss {info['final_minibatch_loss']:.3g}"))
    sharp_kw = {"kind": "worst", "norm": "linf", "adaptive": True, "rho": size.rhos, "n": size.sharp_n,
                "m": size.sharp_m, "steps": size.sharp_steps, "progress": False}
    if "sharpness" in parts:
        ds, secs, peak = timed(lambda: landscape.sharpness(
            model, (x[: size.sharp_n], y[: size.sharp_n]), **sharp_kw, **supported(landscape.sharpness, device=str(device), tf32=tf32)))
        c = calls(ds)
        flops = c["grad"] * costs.forward_backward(size.sharp_m) + (c["loss"] + c["logits"]) * costs.forward(size.sharp_m)
        add(Row("sharpness", secs, peak, flops / fp32,
                f"{c['grad']} fwd+bwd, {c['loss'] + c['logits']} fwd of {size.sharp_m}",
                "sharpness " + ", ".join(f"{float(v):.3g}" for v in ds.sharpness_mean.values)))
    if "hessian" in parts:
        hess_kw = {"batch_size": size.hess_batch, "top_k": 5, "max_steps": size.hess_max_steps,
                   "trace_samples": size.trace_samples, "slq_runs": size.slq_runs, "slq_steps": size.slq_steps, "progress": False}
        ds, secs, peak = timed(lambda: landscape.hessian_spectrum(
            model, (x[: size.hess_n], y[: size.hess_n]), **hess_kw, **supported(landscape.hessian_spectrum, device=str(device), tf32=tf32)))
        c = calls(ds)
        method = ds.attrs["hvp_method"]
        flops = (c["hvp"] * costs.hvp(size.hess_batch, method) + c["grad"] * costs.forward_backward(size.hess_batch)
                 + (c["loss"] + c["logits"]) * costs.forward(size.hess_batch))
        hv = {str(p): int(v) for p, v in zip(ds.part.values, ds.hvps.values)}
        add(Row("hessian", secs, peak, flops / fp32,
                f"{c['hvp']} HVPs ({method}) of {size.hess_batch} = " + "+".join(f"{v} {k}" for k, v in hv.items())
                + " full-data HVPs",
                f"lambda_1 {float(ds.eigenvalues[0]):.4g}, trace {float(ds.trace):.4g}"))
    autocast = "bf16" if args.bf16 else None
    fwd_rate = bf16 if args.bf16 else fp32
    if "slice" in parts:
        kw = {"kind": "random", "ndim": 2, "normalization": "filter", "grid": f"-1:1:{size.slice_points}",
              "batch_size": size.slice_batch, "autocast": autocast, "progress": False}
        ds, secs, peak = timed(lambda: landscape.slice_analysis(
            model, (x[: size.slice_n], y[: size.slice_n]), **kw, **supported(landscape.slice_analysis, device=str(device), tf32=tf32)))
        c = calls(ds)
        flops = (c["loss"] + c["logits"]) * costs.forward(size.slice_batch, autocast) \
            + c["grad"] * costs.forward_backward(size.slice_batch)
        add(Row("slice", secs, peak, flops / fwd_rate,
                f"{c['loss'] + c['logits']} fwd of {size.slice_batch} ({size.slice_points}x{size.slice_points} grid)",
                f"loss {float(ds.loss.min()):.3g}..{float(ds.loss.max()):.3g}"))
    if "feature_rank" in parts:
        kw = {"n": size.rank_n, "batch_size": size.rank_batch, "progress": False,
              **supported(landscape.feature_rank, autocast=autocast, device=str(device), tf32=tf32)}
        rate = bf16 if "autocast" in kw else fp32
        ds, secs, peak = timed(lambda: landscape.feature_rank(
            model, (x[: size.rank_n], y[: size.rank_n]), **kw))
        c = calls(ds)
        flops = (c["loss"] + c["logits"]) * costs.forward(size.rank_batch, kw.get("autocast"))
        add(Row("feature_rank", secs, peak, flops / rate, f"{c['loss'] + c['logits']} fwd of {size.rank_batch}",
                "rank " + ", ".join(str(int(v)) for v in ds["rank"].values.ravel())))
    if "norm_params" in parts:
        ds, secs, peak = timed(lambda: landscape.norm_params(model))
        nbytes = sum(p.numel() * p.element_size() for m in model.modules()
                     if isinstance(m, torch.nn.modules.batchnorm._NormBase) for p in m.parameters())
        add(Row("norm_params", secs, peak, nbytes / bandwidth, f"{nbytes:,} bytes of gamma/beta read",
                f"{ds.sizes['layer']} layers"))
    total = sum(r.seconds for r in rows)
    print(f"\ntotal {total:.1f} s over {len(rows)} parts")
    return {**head, "parts": [{**asdict(r), "ratio": r.ratio} for r in rows], "total_seconds": total,
            "table": table(rows)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def fmt_bytes(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**30:.2f} GiB"


def format_row(r: Row) -> str:
    return (f"part {r.part}: time {r.seconds:.3f} s, peak memory {fmt_bytes(r.peak_bytes)}, "
            f"floor {r.floor_seconds:.3g} s, ratio {r.ratio:.3g}  [{r.what}; {r.result}]")


def table(rows: list[Row]) -> str:
    lines = ["| part | wall s | peak memory | floor s | wall / floor | model evaluations | result |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r.part} | {r.seconds:.2f} | {fmt_bytes(r.peak_bytes)} | {r.floor_seconds:.3g} | "
                     f"{r.ratio:.3g} | {r.what} | {r.result} |")
    return "\n".join(lines)


def write_out(path: str, out: dict) -> None:
    p = Path(path)
    md = (f"{out['model']} on {out['device']}, torch {out['torch']}, {out['data']}; float32 matmul "
          f"{out['fp32_matmul_tflops']:.3g} TFLOP/s (TF32 {'on' if out['tf32'] else 'off'}), {out['date']}, "
          f"load average {out['load_average']}\n\n{out['table']}\n")
    if p.suffix == ".md":
        atomic_write_text(p, md)
    elif p.suffix == ".json":
        atomic_write_text(p, json.dumps(out, indent=2, default=str))
    else:
        atomic_write_text(p.with_suffix(p.suffix + ".json"), json.dumps(out, indent=2, default=str))
        atomic_write_text(p.with_suffix(p.suffix + ".md"), md)


def _parts(s: str) -> list[str]:
    got = [t.strip() for t in s.split(",") if t.strip()]
    bad = [t for t in got if t not in PARTS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(bad)}; accepted: {', '.join(PARTS)}")
    return got


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="toy size (WRN-10-1, 8x8, 5x5 grid): seconds on a CPU")
    ap.add_argument("--parts", type=_parts, default=list(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions (the throughput too)")
    ap.add_argument("--bf16", action="store_true", help="autocast bf16 for the forward-only parts (slice, feature rank)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (0: leave as is)")
    ap.add_argument("--trace-samples", type=int, default=None,
                    help="the Hessian trace budget in HVPs (default: 100 at full size, the analysis' default)")
    ap.add_argument("--estimate", action="store_true",
                    help="no run: FLOPs per part counted on the meta device x the planned calls, floors at nominal peaks")
    ap.add_argument("--out", default=None, help="write the table (.md), the numbers (.json) or both (other suffix)")
    args = ap.parse_args(argv)
    torch_device = torch.device(args.device)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available here; accepted: cpu, or cuda on a GPU machine")
    if args.estimate:
        size = TINY if args.tiny else FULL
        if args.trace_samples is not None:
            size = replace(size, trace_samples=args.trace_samples)
        return {"estimate": estimate(size)}
    out = run_suite(args)
    if args.out:
        write_out(args.out, out)
    return out


if __name__ == "__main__":
    main()
