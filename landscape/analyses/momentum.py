"""Curvature along the momentum direction (MSAM Appendix A.4) and along comparison directions.

For a unit direction ``u`` over a parameter group, the curvature is ``u^T H u`` (one
Hessian-vector product, exact; finite differences do not settle on ReLU nets, see
REFERENCES.md "MSAM") and the slope is ``g^T u``. MSAM Appendix A.4 compares the momentum
direction ``v/||v||`` (the optimizer's momentum buffer, or AdamW's ``exp_avg``) with the gradient
direction and random directions, and Section 2.4 argues that the momentum direction has a
*negative* slope at the next iterate and high curvature. Section 4.1/Fig. 2C uses the cosine
between gradient and momentum.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch import nn

from landscape.analyses.common import make_options, stamp
from landscape.config import check
from landscape.objective import Objective, ObjectiveOptions

__all__ = ["MomentumOptions", "momentum_curvature", "momentum_from_checkpoint"]


@dataclass(frozen=True)
class MomentumOptions(ObjectiveOptions):
    """Options of :func:`momentum_curvature` (the momentum itself comes from the checkpoint),
    on top of the shared :class:`~landscape.objective.ObjectiveOptions`."""

    random_directions: int = 5
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check(isinstance(self.random_directions, int) and self.random_directions >= 0,
              f"MomentumOptions.random_directions must be an int >= 0, got {self.random_directions!r}")


def momentum_curvature(
    model: nn.Module,
    data,
    momentum: dict[str, torch.Tensor],
    *,
    batch_size: int | None = 256,
    max_samples: int | None = None,
    bn_mode: str = "eval",
    loss: str | Callable = "ce",
    logit_normalize: bool = False,
    params: str = "all",
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    micro_batch_size: int | None = None,
    tf32: bool = False,
    batch_fn: str | Callable | None = None,
    output_fn: str | Callable | None = None,
    random_directions: int = 5,
    seed: int = 0,
) -> xr.Dataset:
    """Curvature ``u^T H u`` and slope ``g^T u`` along momentum, gradient and random directions.

    Args:
        model: the network (not modified).
        data: training data in any form of :mod:`landscape.inputs`; the first ``max_samples``.
        momentum: momentum buffers by parameter name (``Checkpoint.momentum()``); parameters of
            the group without a buffer count as zero.
        batch_size, max_samples, bn_mode, loss, logit_normalize, params, dtype, batch_fn,
            output_fn: the shared objective options (:class:`landscape.objective.ObjectiveOptions`;
            ``loss`` may be a callable, ``dtype`` a ``torch.dtype``). ``params``: the group
            (``"all"``, ``"norm"``, ...; frozen parameters are never in it).
        device, micro_batch_size, tf32: where it computes (``None``: the model's device; "cpu",
            "cuda", "cuda:N" or a ``torch.device``; the model is never moved, the objective's
            copies of its parameters are), pieces of at most ``micro_batch_size`` examples per
            batch (the same function, less memory) and TF32 matmuls on CUDA (off by default);
            see :class:`~landscape.objective.Objective` and README "Analyses on a GPU".
        random_directions: number of Gaussian directions (seeded), MSAM A.4's "random".
        seed: seeds the random directions.

    Returns:
        Dataset over ``direction`` (``momentum``, ``gradient``, ``random_0``...) with ``curvature``,
        ``slope`` and ``direction_norm`` (norm before normalizing), plus scalars ``cosine``
        (gradient vs momentum), ``loss`` and ``hvps``; curvature, slope and loss in the loss's
        units.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
        >>> mom = {n: torch.randn_like(p) for n, p in m.named_parameters()}
        >>> ds = momentum_curvature(m, (x, y), mom, random_directions=2)
        >>> ds.direction.values.tolist()
        ['momentum', 'gradient', 'random_0', 'random_1']
    """
    opts, objects = make_options(MomentumOptions, locals())
    obj = Objective.from_options(model, data, opts, **objects)
    loss0 = obj.check_finite()
    missing = [n for n in obj.names if n not in momentum]
    if len(missing) == len(obj.names):
        raise ValueError(
            f"momentum_curvature: the momentum buffers cover none of the {len(obj.names)} parameters of "
            f"group {opts.params!r} (e.g. {obj.names[0]!r}); pass Checkpoint.momentum() of the same model"
        )
    theta = obj.theta0
    # flatten checks every buffer's shape against its parameter
    v = obj.flatten({
        n: momentum[n].to(device=theta.device, dtype=theta.dtype) if n in momentum else torch.zeros(s, dtype=theta.dtype, device=theta.device)
        for n, s in zip(obj.names, obj.shapes)
    })
    _, g = obj.loss_and_grad(theta)
    gen = torch.Generator().manual_seed(int(opts.seed))
    dirs = {"momentum": v, "gradient": g}
    for i in range(opts.random_directions):
        dirs[f"random_{i}"] = torch.randn(obj.numel, generator=gen, dtype=torch.float64).to(theta)
    hvp = obj.hvp_operator(theta, method="auto")
    names, curv, slope, norms = [], [], [], []
    for name, d in dirs.items():
        nrm = float(torch.linalg.vector_norm(d.double()))
        names.append(name)
        norms.append(nrm)
        if nrm == 0.0:  # e.g. a fresh optimizer: no direction to measure
            curv.append(np.nan)
            slope.append(np.nan)
            continue
        u = d / nrm
        curv.append(float(torch.dot(u.double(), hvp(u).double())))
        slope.append(float(torch.dot(g.double(), u.double())))
    gn, vn = float(torch.linalg.vector_norm(g.double())), float(torch.linalg.vector_norm(v.double()))
    cosine = float(torch.dot(g.double(), v.double()) / (gn * vn)) if gn > 0 and vn > 0 else float("nan")
    units = obj.loss_spec.units
    ds = xr.Dataset(
        {
            "curvature": ("direction", np.asarray(curv), {
                "long_name": "curvature u^T H u along the unit direction (MSAM Appendix A.4)", "units": units}),
            "slope": ("direction", np.asarray(slope), {
                "long_name": "directional derivative g^T u of the loss", "units": units}),
            "direction_norm": ("direction", np.asarray(norms), {
                "long_name": "norm of the direction before normalization", "units": "1"}),
            "cosine": ((), cosine, {"long_name": "cosine between gradient and momentum", "units": "1"}),
            "loss": ((), loss0, {"long_name": "mean loss at the checkpoint", "units": units}),
            "hvps": ((), int(obj.calls["hvp"]), {"long_name": "Hessian-vector products (full data)", "units": "1"}),
        },
        coords={"direction": ("direction", names, {"long_name": "direction", "units": "1"})},
        attrs={"missing_momentum": json.dumps(missing)},
    )
    return stamp(ds, "momentum", opts, obj)


def momentum_from_checkpoint(checkpoint) -> dict[str, dict[str, torch.Tensor]]:
    """Registry hook: the checkpoint's momentum buffers as the ``momentum`` argument."""
    return {"momentum": checkpoint.momentum()}
