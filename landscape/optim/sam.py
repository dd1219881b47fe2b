"""The SAM family: one optimizer = a perturbation model T_w x a parameter mask.

Every variant takes one ascent step of radius ``rho`` in the T-normalized norm and evaluates the
gradient there (SAM-ON Eq. 5):

    p = 2:    e = rho * T^2 g / ||T g||_2
    p = inf:  e = rho * T * sign(g)

so that ``||T^{-1} e||_p = rho``. ``T`` is diagonal; SAM-ON Appendix A.3, Table 9 defines it:

=====================  =========================================================  ====  ======
variant                T_w^i                                                       p     eta
=====================  =========================================================  ====  ======
``sam``                1                                                           2     -
``asam-el-l2``         |w_i| + eta                                                 2     0
``asam-el-l2-orig``    |w_i| + eta for weights, 1 + eta for biases (ASAM, Kwon      2     0.01
                       et al.; normalization gamma is a weight, beta a bias)
``asam-el-linf``       |w_i| + eta                                                 inf   0
``asam-layer-l2``      ||W_layer||_2 + eta (Frobenius norm of w_i's tensor)        2     0
``fisher``             (1 + eta g_i^2)^(-1/2) (Fisher-SAM, Kim et al.)             2     1
=====================  =========================================================  ====  ======

A *mask* sets ``T = 0`` outside a parameter group (SAM-ON Appendix A.3: "SAM-ON can be formally
defined as using the conventional (A)SAM-algorithm but setting all entries T_w^i = 0 if w_i is
not a normalization parameter"), so the norm ``||T g||`` runs over the masked parameters only and
the whole radius goes to them. Masks: ``all``; ``norm`` (SAM-ON); ``no-norm``; ``random`` (as
many entries as ``norm``, drawn uniformly among all entries with ``mask_seed``); ``blocks``
(normalization parameters of the stages in ``blocks``, SAM-ON Section 4.3's "B3", "B2+B3");
or any group spec of :mod:`landscape.params` (``"weights"``, ``"glob:fc.*"``, ``"norm&B3"``).

``m`` (SAM Section 4.1, m-sharpness) splits each batch into chunks of ``m`` samples; each chunk
gets its own perturbation and the update uses the mean of the chunks' perturbed gradients.

Example:
    >>> import torch
    >>> from landscape.models import build_model
    >>> from landscape.optim import SAM, train_step
    >>> model = build_model("mlp", input_shape=(8,), num_classes=3, width=16, norm="batch")
    >>> opt = SAM(model, torch.optim.SGD, rho=0.05, mask="norm", lr=0.1, momentum=0.9)
    >>> x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    >>> loss, logits = train_step(model, opt, x, y, torch.nn.functional.cross_entropy)
    >>> "momentum_buffer" in opt.state_dict()["state"][0]
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from landscape import params as P
from landscape.optim.bn import frozen_bn_stats

# variant -> (p, default eta); SAM-ON Table 9 and Appendix A.1 ("For each of the ASAM-variants,
# we normalize both bias and weight parameters and set eta = 0"; the original ASAM uses 0.01).
VARIANTS: dict[str, tuple[float, float | None]] = {
    "sam": (2.0, None),
    "asam-el-l2": (2.0, 0.0),
    "asam-el-l2-orig": (2.0, 0.01),
    "asam-el-linf": (math.inf, 0.0),
    "asam-layer-l2": (2.0, 0.0),
    "fisher": (2.0, 1.0),
}

MASKS = ("all", "norm", "no-norm", "random", "blocks")


class OptimizerWrapper(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that drives a base optimizer and shares its state.

    ``param_groups`` and ``state`` *are* the base optimizer's (properties that always read
    through, also after ``base_optimizer.load_state_dict`` replaced them), so a trainer that sets
    ``group["lr"]`` on the wrapper (or an LR scheduler) steers the base optimizer, and
    ``state_dict()`` / ``load_state_dict()`` are the base optimizer's (with its momentum
    buffers), loadable into a plain base optimizer and back.
    """

    def __init__(self, params: Iterable, base_optimizer_class: type[torch.optim.Optimizer], **base_kwargs):
        if not (isinstance(base_optimizer_class, type) and issubclass(base_optimizer_class, torch.optim.Optimizer)):
            raise TypeError(
                f"base_optimizer_class must be a torch.optim.Optimizer subclass such as torch.optim.SGD, "
                f"got {base_optimizer_class!r}"
            )
        base = base_optimizer_class(params, **base_kwargs)
        # torch's __init__ sets up hooks and fills throw-away param_groups/state (see setters)
        super().__init__(base.param_groups, base.defaults)
        self.__dict__.pop("_init_param_groups", None)
        self.__dict__.pop("_init_state", None)
        self.base_optimizer = base

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        base = self.__dict__.get("base_optimizer")
        return base.param_groups if base is not None else self.__dict__["_init_param_groups"]

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        base = self.__dict__.get("base_optimizer")
        if base is not None:
            base.param_groups = value
        else:
            self.__dict__["_init_param_groups"] = value

    @property
    def state(self):  # type: ignore[override]
        base = self.__dict__.get("base_optimizer")
        return base.state if base is not None else self.__dict__["_init_state"]

    @state.setter
    def state(self, value) -> None:
        base = self.__dict__.get("base_optimizer")
        if base is not None:
            base.state = value
        else:
            self.__dict__["_init_state"] = value

    def __getstate__(self) -> dict[str, Any]:  # copy/pickle the wrapper with its base optimizer
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (holds ``momentum_buffer`` / ``exp_avg``)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a base-optimizer state dict (from this wrapper or the plain base optimizer)."""
        self.base_optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "base_optimizer" in self.__dict__:
            self.base_optimizer.add_param_group(param_group)
        else:  # during torch.optim.Optimizer.__init__: the base's own groups, into the throw-away list
            super().add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)


def _named_params(model_or_params) -> tuple[nn.Module | None, list[tuple[str, nn.Parameter]], list]:
    """(model or None, [(name, param)] trainable, what to hand to the base optimizer)."""
    if isinstance(model_or_params, nn.Module):
        named = [(n, p) for n, p in model_or_params.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(f"{type(model_or_params).__name__} has no trainable parameters")
        return model_or_params, named, [p for _, p in named]
    if isinstance(model_or_params, torch.Tensor):
        raise TypeError("pass a model or an iterable of parameters, not a single tensor")
    items = list(model_or_params)
    flat: list[nn.Parameter] = []
    for it in items:
        if isinstance(it, dict):
            ps = it["params"]
            flat.extend([ps] if isinstance(ps, torch.Tensor) else list(ps))
        else:
            flat.append(it)
    if not flat:
        raise ValueError("optimizer got an empty parameter list")
    return None, [(f"param{i}", p) for i, p in enumerate(flat)], items


class _Entry:
    """One parameter inside the mask: its elementwise mask (None = whole tensor) and kind."""

    __slots__ = ("name", "param", "mask", "is_bias")

    def __init__(self, name: str, param: nn.Parameter, mask: torch.Tensor | None, is_bias: bool):
        self.name, self.param, self.mask, self.is_bias = name, param, mask, is_bias


def _is_bias(model: nn.Module | None, name: str, p: nn.Parameter, norm_names: set[str]) -> bool:
    """ASAM's weight/bias split (Table 9, el. l2 orig.): normalization beta and 1-D others are biases."""
    if name in norm_names:
        return name.rsplit(".", 1)[-1] != "weight"  # the norm module's own ``weight`` is gamma
    return p.ndim <= 1


class SAM(OptimizerWrapper):
    """Sharpness-aware minimization: perturbation model x mask, wrapping any base optimizer.

    Args:
        model_or_params: the model (needed for every mask but ``all``, since masks select
            parameters by module type) or an iterable of parameters / parameter groups.
        base_optimizer_class: e.g. ``torch.optim.SGD`` or ``torch.optim.AdamW``.
        rho: perturbation radius in the T-normalized norm, ``>= 0`` (SAM Section 3: 0.05).
        variant: perturbation model, one of :data:`VARIANTS` (SAM-ON Table 9).
        mask: ``all``, ``norm``, ``no-norm``, ``random``, ``blocks`` or a group spec.
        m: m-sharpness chunk size (SAM Section 4.1); ``None`` = the whole batch. Used by
            :meth:`train_step`; the batch size must be a multiple of ``m``.
        eta: T's offset; ``None`` = the variant's default (0.01 for ``asam-el-l2-orig``, 1 for
            ``fisher``, 0 otherwise; Table 9). Not used by ``sam``.
        blocks: stages for ``mask="blocks"``, e.g. ``"B3"`` or ``"B2+B3"``.
        mask_seed: seed of the ``random`` mask.
        freeze_bn_stats: leave BatchNorm running statistics untouched by the forward pass at the
            perturbed point (in :meth:`train_step` and :meth:`step`).
        **base_kwargs: passed to the base optimizer (``lr``, ``momentum``, ``weight_decay``...).

    The usual two-pass API::

        loss_fn(model(x), y).backward()
        opt.first_step(zero_grad=True)     # w -> w + e
        loss_fn(model(x), y).backward()
        opt.second_step(zero_grad=True)    # back to w exactly, then the base step

    :meth:`train_step` does that plus m-sharpness, frozen BatchNorm statistics in the second pass
    and the SAM-ON saving: the first backward pass computes gradients only for parameters in
    the mask (SAM-ON Section 4.3), the others get ``requires_grad=False`` meanwhile.
    """

    def __init__(
        self,
        model_or_params,
        base_optimizer_class: type[torch.optim.Optimizer],
        *,
        rho: float,
        variant: str = "sam",
        mask: str = "all",
        m: int | None = None,
        eta: float | None = None,
        blocks: str = "",
        mask_seed: int = 0,
        freeze_bn_stats: bool = True,
        **base_kwargs,
    ):
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho < 0:
            raise ValueError(f"SAM: rho must be a finite number >= 0, got {rho!r}")
        if variant not in VARIANTS:
            raise ValueError(f"SAM: unknown variant {variant!r}; accepted: {', '.join(VARIANTS)}")
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"SAM: m must be a positive chunk size (samples per perturbation) or None, got {m!r}")
        p_norm, default_eta = VARIANTS[variant]
        if variant == "sam":
            if eta not in (None, 0, 0.0):
                raise ValueError(f"SAM: eta={eta!r} has no effect for variant 'sam' (T = 1); leave it None")
            eta = 0.0
        elif eta is None:
            eta = default_eta
        elif not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
            raise ValueError(f"SAM: eta must be a finite number >= 0, got {eta!r}")
        model, named, base_params = _named_params(model_or_params)
        if not isinstance(mask, str) or not mask:
            raise ValueError(f"SAM: mask must be a non-empty string, got {mask!r}; accepted: {', '.join(MASKS)} or a group spec")
        if model is None and mask != "all":
            raise ValueError(
                f"SAM: mask={mask!r} selects parameters by module type, so pass the model, not a parameter list"
            )
        if blocks and mask != "blocks":
            raise ValueError(f"SAM: blocks={blocks!r} is only used with mask='blocks', not mask={mask!r}")
        super().__init__(base_params, base_optimizer_class, **base_kwargs)
        self.model = model
        self.rho = float(rho)
        self.variant = variant
        self.p = p_norm
        self.eta = float(eta)
        self.m = m
        self.mask_spec = mask
        self.blocks = blocks
        self.mask_seed = mask_seed
        self.freeze_bn_stats = bool(freeze_bn_stats)
        self._entries = self._build_mask(model, named, mask, blocks, mask_seed)
        in_mask = {id(e.param) for e in self._entries}
        # parameters whose ascent gradient is never needed (SAM-ON Section 4.3)
        self._outside = [p for _, p in named if id(p) not in in_mask]
        self._backup: list[torch.Tensor] | None = None

    # ------------------------------------------------------------------ masks
    @staticmethod
    def _build_mask(model, named, mask: str, blocks: str, seed: int) -> list[_Entry]:
        norm_names = P.norm_parameter_names(model) if model is not None else set()
        if mask == "random":
            k = sum(p.numel() for n, p in named if n in norm_names)
            if k == 0:
                raise P.GroupError(
                    f"SAM mask='random' draws as many entries as the normalization parameters, and "
                    f"{type(model).__name__} has none; use another mask"
                )
            sizes = [p.numel() for _, p in named]
            gen = torch.Generator().manual_seed(int(seed))
            flat = torch.zeros(sum(sizes), dtype=torch.bool)
            flat[torch.randperm(sum(sizes), generator=gen)[:k]] = True
            entries = []
            for (n, p), chunk in zip(named, flat.split(sizes)):
                if chunk.any():
                    mk = chunk.view(p.shape).to(device=p.device, dtype=p.dtype)
                    entries.append(_Entry(n, p, mk, _is_bias(model, n, p, norm_names)))
            return entries
        if mask == "all":
            return [_Entry(n, p, None, _is_bias(model, n, p, norm_names)) for n, p in named]
        spec = f"norm&{blocks}" if mask == "blocks" else mask
        if mask == "blocks" and not blocks:
            raise ValueError("SAM: mask='blocks' needs blocks='B3', 'B2+B3' or similar")
        try:
            chosen = P.select(model, spec)
        except P.GroupError as err:
            raise P.GroupError(f"SAM mask={mask!r}" + (f" (blocks={blocks!r})" if blocks else "") + f": {err}") from None
        return [_Entry(n, p, None, _is_bias(model, n, p, norm_names)) for n, p in named if n in chosen]

    @property
    def masked_parameters(self) -> dict[str, nn.Parameter]:
        """``{name: parameter}`` with at least one entry inside the mask (model order).

        Names are the model's; for a plain parameter list they are ``param0``, ``param1``...
        """
        return {e.name: e.param for e in self._entries}

    def mask_tensors(self) -> dict[str, torch.Tensor]:
        """``{name: 0/1 tensor}`` for the masked parameters (1 = perturbed entry)."""
        return {e.name: (torch.ones_like(e.param) if e.mask is None else e.mask.clone()) for e in self._entries}

    # ----------------------------------------------------------- perturbation
    def _scale(self, e: _Entry, g: torch.Tensor) -> torch.Tensor | None:
        """T for one masked tensor (None = identity), SAM-ON Table 9, times the mask."""
        w = e.param.detach()
        v = self.variant
        if v == "sam":
            t = None
        elif v in ("asam-el-l2", "asam-el-linf"):
            t = w.abs() + self.eta
        elif v == "asam-el-l2-orig":
            t = torch.full_like(w, 1.0 + self.eta) if e.is_bias else w.abs() + self.eta
        elif v == "asam-layer-l2":
            t = (torch.linalg.vector_norm(w) + self.eta).expand_as(w)
        else:  # fisher
            t = torch.rsqrt(1.0 + self.eta * g * g)
        if e.mask is not None:
            t = e.mask if t is None else t * e.mask
        return t

    @torch.no_grad()
    def perturbation(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """The ascent step ``e`` (SAM-ON Eq. 5) from the current gradients, without applying it.

        Masked parameters without a gradient get ``e = 0``; when ``||T g|| = 0`` so does
        everything (no direction to ascend).
        """
        # Imported here: only this method's body belongs to the ascent-step refactor.
        from landscape.ascent import ascent_step

        items = [(e, e.param.grad) for e in self._entries if e.param.grad is not None]
        if not items:
            return []
        grads = [g for _, g in items]
        scales = [self._scale(e, g) for e, g in items]
        # The one ascent step of landscape (shared with the sharpness analyses); no host sync.
        steps = ascent_step(grads, scales, rho=self.rho, norm="l2" if self.p == 2 else "linf")
        return [(e.param, d) for (e, _), d in zip(items, steps)]

    @property
    def perturbed(self) -> bool:
        """True between :meth:`first_step` and :meth:`restore` / :meth:`second_step`."""
        return self._backup is not None

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to ``w + e`` using the gradients now in ``.grad`` (computed at ``w``)."""
        if self._backup is not None:
            raise RuntimeError("SAM.first_step called twice; call second_step (or restore) in between")
        eps = self.perturbation()
        self._backup = [e.param.detach().clone() for e in self._entries]
        for p, d in eps:
            p.add_(d)
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the exact weights saved by :meth:`first_step` (no optimizer step)."""
        if self._backup is None:
            raise RuntimeError("SAM.restore/second_step called without first_step")
        for e, w in zip(self._entries, self._backup):
            e.param.copy_(w)
        self._backup = None

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w`` exactly, then step the base optimizer with the gradients at ``w + e``."""
        self.restore()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @contextmanager
    def ascent_grads_only(self) -> Iterator[None]:
        """Within the block, parameters outside the mask have ``requires_grad=False``.

        Autograd then skips their weight-gradient work in the ascent backward pass (SAM-ON
        Section 4.3). The flags are restored on exit, also after an exception.
        """
        flipped = [p for p in self._outside if p.requires_grad]
        try:
            for p in flipped:
                p.requires_grad_(False)
            yield
        finally:
            for p in flipped:
                p.requires_grad_(True)

    def _second_pass_context(self, model: nn.Module | None):
        if self.freeze_bn_stats and model is not None:
            return frozen_bn_stats(model)
        return nullcontext()

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """One SAM step: ``closure`` (forward + backward, returns the loss) is called twice.

        First at ``w`` (gradients only for masked parameters), then at ``w + e`` (BatchNorm
        statistics frozen if ``freeze_bn_stats`` and a model was given). Gradients are cleared
        before each call. Returns the loss at ``w``. m-sharpness needs the batch, so it lives in
        :meth:`train_step`.
        """
        if closure is None:
            raise ValueError(
                "SAM.step needs a closure that runs forward and backward and returns the loss; or "
                "call first_step/second_step yourself, or use landscape.optim.train_step"
            )
        closure = torch.enable_grad()(closure)
        self.zero_grad(set_to_none=True)
        with self.ascent_grads_only():
            loss = closure()
        self.first_step(zero_grad=True)
        try:
            with self._second_pass_context(self.model):
                closure()
        except BaseException:
            self.restore()
            raise
        self.second_step()
        return loss

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        """A full SAM step on one batch; see :func:`landscape.optim.train_step`."""
        n = x.shape[0]
        if self.m is not None and n % self.m:
            raise ValueError(f"SAM: m={self.m} must divide the batch size {n} (m-sharpness splits the batch into chunks of m)")
        k = 1 if self.m is None else n // self.m
        xs, ys = (x, y) if k == 1 else (x.split(self.m), y.split(self.m))
        chunks = [(x, y)] if k == 1 else list(zip(xs, ys))
        losses, logits_all = [], []
        acc: list[torch.Tensor | None] | None = None
        all_params = [p for g in self.param_groups for p in g["params"]]
        for xc, yc in chunks:
            self.zero_grad(set_to_none=True)
            with self.ascent_grads_only():
                logits = model(xc)
                loss = loss_fn(logits, yc)
                loss.backward()
            losses.append(loss.detach())
            logits_all.append(logits.detach())
            self.first_step(zero_grad=True)
            try:
                with self._second_pass_context(model):
                    loss_fn(model(xc), yc).backward()
            finally:
                self.restore()
            if k > 1:
                with torch.no_grad():
                    if acc is None:
                        acc = [None if p.grad is None else p.grad.detach().clone() for p in all_params]
                    else:
                        for i, p in enumerate(all_params):
                            if p.grad is not None:
                                acc[i] = p.grad.detach().clone() if acc[i] is None else acc[i].add_(p.grad)
        if k > 1:
            for p, a in zip(all_params, acc):
                p.grad = None if a is None else a.div_(k)
        self.base_optimizer.step()
        mean_loss = losses[0] if k == 1 else torch.stack(losses).mean()
        return mean_loss, logits_all[0] if k == 1 else torch.cat(logits_all)
