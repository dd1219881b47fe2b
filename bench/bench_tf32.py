"""TF32's error on Hessian eigenvalues, *emulated* on the CPU: top-5 of a small CNN, TF32 vs float32.

No TF32 GPU is needed: :func:`landscape.precision.emulated_tf32` rounds the float32 operands of
every matrix product and convolution (forward and backward, so every HVP) to TF32's 10-bit
mantissa and accumulates in float32, as tensor cores do (the GPU's accumulation order is not
modelled). The same ``hessian_spectrum`` call (same seed, same Lanczos start) runs three ways:
float64 (the reference), float32, float32 with emulated TF32, on a small CNN (two 3x3
convolutions, 8 channels, and a linear head; 2,098 parameters) trained for 40 SGD steps on 128
synthetic 8x8 CIFAR-shaped examples, so the spectrum is past initialization.

Usage:
    .venv/bin/python bench/bench_tf32.py            # a few minutes on 2 CPU cores
    .venv/bin/python bench/bench_tf32.py --quick    # a smoke test
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from landscape.analyses.hessian import hessian_spectrum
from landscape.precision import emulated_tf32


def model_and_data(quick: bool, seed: int):
    """A small CNN (two 3x3 convolutions with 8 channels, a linear head: 2,098 parameters) trained
    briefly on synthetic 8x8 CIFAR-shaped data, so the spectrum is past initialization."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    n = 64 if quick else 128
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(10 if quick else 40):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), (x, y)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3, help="models (training seeds)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    kw = dict(top_k=5, tol=1e-5, trace=False, density=False, hvp_method="double-backward", batch_size=None,
              progress=False, seed=0)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    rows = []
    for seed in range(args.seeds):
        model, data = model_and_data(args.quick, seed)
        ref = hessian_spectrum(model, data, dtype="float64", **kw).eigenvalues.values
        f32 = hessian_spectrum(model, data, dtype="float32", **kw).eigenvalues.values
        with emulated_tf32():
            tf = hessian_spectrum(model, data, dtype="float32", tf32=True, **kw).eigenvalues.values
        for k in range(len(ref)):
            rows.append((seed, k + 1, ref[k], abs(f32[k] - ref[k]) / abs(ref[k]), abs(tf[k] - ref[k]) / abs(ref[k])))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("| model seed | k | lambda_k (float64) | float32 rel. error | TF32 (emulated) rel. error |")
    print("|---|---|---|---|---|")
    for seed, k, lam, e32, etf in rows:
        print(f"| {seed} | {k} | {lam:.5g} | {e32:.1e} | {etf:.1e} |")
    e32 = np.array([r[3] for r in rows])
    etf = np.array([r[4] for r in rows])
    print(f"median rel. error: float32 {np.median(e32):.1e}, TF32 (emulated) {np.median(etf):.1e}; "
          f"max: float32 {e32.max():.1e}, TF32 (emulated) {etf.max():.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
