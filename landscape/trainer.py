"""The training loop: SGD/AdamW, the SAM family and MSAM; writes checkpoints and ``run.json``.

A run folder holds ``epoch_NNNN.pt`` (every ``save_every`` epochs and the last one),
``step_NNNNNNNN.pt`` (every ``save_every_steps`` steps, when set), ``last.pt`` (the resume
point, rewritten every epoch) and ``run.json`` (config, per-epoch metrics with timings,
optional per-step diagnostics, status). Same config and seed give byte-identical checkpoints on
CPU; a resumed run gives the same result as an uninterrupted one (RNG and data-order state are
checkpointed).

The loop's state is one :class:`LoopState`; one epoch is :func:`_epoch`, one step
:func:`_step`. Everything that changes *how* a step runs (a wrapped or compiled model, autocast
and a gradient scaler, sharded batches, which process writes files) is a field of the state,
so the loop itself has no case distinction for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from landscape import distributed as D
from landscape.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from landscape.config import ConfigError, TrainConfig, resolve_device
from landscape.data import ArrayDataset, get_dataset
from landscape.models import build_model
from landscape.precision import Precision
from landscape.progress import Progress
from landscape.results import read_json, write_json

log = logging.getLogger("landscape")

# Config keys that may change between the original run and a resume without changing the run.
RESUME_FREE_KEYS = ("epochs", "out", "resume", "device", "threads", "save_every", "save_every_steps",
                    "diagnostics_every")

__all__ = ["DivergedError", "LoopState", "TrainingError", "evaluate", "lr_factor", "resolve_device", "train"]


class TrainingError(RuntimeError):
    """Training cannot go on (diverged loss, incompatible resume, a failed compilation).

    ``status`` is what ``run.json`` records for it.
    """

    status = "failed"


class DivergedError(TrainingError):
    """The loss became NaN or infinite."""

    status = "diverged"


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up over ``warmup_epochs``, then cosine decay to 0 (or constant)."""
    total = cfg.epochs * steps_per_epoch
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - warm) / max(total - warm, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayDataset, batch_size: int, device: torch.device) -> dict[str, float]:
    """Mean cross-entropy and accuracy over a data set, in eval mode (mode restored)."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    try:
        for x, y in data.batches(batch_size):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    finally:
        model.train(was_training)
    n = max(len(data), 1)
    return {"loss": loss_sum / n, "acc": correct / n}


@dataclass
class LoopState:
    """Everything the training loop reads and updates.

    ``net`` is the plain module (evaluated, recalibrated, saved); ``model`` is what a step calls:
    ``net`` itself, or ``net`` compiled and/or wrapped (DistributedDataParallel). ``step_kwargs``
    go to every ``train_step`` call (``autocast``, ``scaler`` for mixed precision); ``is_main``
    is False on processes that must not write files.
    """

    cfg: TrainConfig
    cfg_dict: dict[str, Any]  # as stored in checkpoints and run.json (JSON-plain)
    out: Path
    device: torch.device
    net: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_step: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    train_ds: ArrayDataset
    test_ds: ArrayDataset
    gen: torch.Generator  # data order and augmentation
    steps_per_epoch: int
    drop_last: bool
    optimizer_spec: dict[str, Any]
    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimizer steps
    history: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    is_main: bool = True
    dist_env: D.DistEnv = field(default_factory=D.DistEnv)  # torchrun's WORLD_SIZE/RANK/LOCAL_RANK
    backend: str = "none"  # torch.distributed backend ("none": one process)
    show_progress: bool = True
    bar: Progress | None = None
    check_compiled: bool = False  # compare the compiled and eager loss on the next batch


def _config_for_compare(d: dict[str, Any], where: Path | None = None) -> dict[str, Any]:
    """A stored config in today's form (older spellings migrated), minus the resume-free keys."""
    try:
        d = _plain_json(asdict(TrainConfig.from_dict(d)))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{where}: its stored config is not a valid TrainConfig: {e}") from None
    return {k: v for k, v in d.items() if k not in RESUME_FREE_KEYS}


def _rng_state(state: LoopState) -> dict[str, Any]:
    """What a resumed run needs besides weights and optimizer state to continue exactly: the
    generator states and, with fp16, the gradient scaler's scale and growth counter."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "data": state.gen.get_state()}
    if state.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(state.device)
    scaler = state.step_kwargs.get("scaler")
    if scaler is not None:
        rng["grad_scaler"] = dict(scaler.state_dict())  # floats and ints
    return rng


def _set_rng_state(rng: Any, gen: torch.Generator, device: torch.device, path: Path) -> None:
    ok = isinstance(rng, dict) and all(
        isinstance(rng.get(k), torch.Tensor) and rng[k].dtype == torch.uint8 for k in ("torch", "data")
    )
    if not ok:
        raise CheckpointError(
            f"{path}: has no usable 'rng' entry (torch and data-order generator states), so the run "
            "cannot continue exactly; start a new run with another --out (or --no-resume elsewhere)"
        )
    try:
        torch.set_rng_state(rng["torch"])
        gen.set_state(rng["data"])
        if device.type == "cuda" and isinstance(rng.get("cuda"), torch.Tensor):
            torch.cuda.set_rng_state(rng["cuda"], device)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: its 'rng' entry is not a generator state: {e}") from None


def train(cfg: TrainConfig, *, progress: bool = True) -> Path:
    """Train a model as ``cfg`` says and return the run folder.

    Resumes from ``<out>/last.pt`` when it exists and ``cfg.resume`` (the stored config must
    match, except for epochs/out/device/threads/save_every/save_every_steps/diagnostics_every).
    Raises ``DivergedError`` (a ``TrainingError``) when the loss becomes NaN/inf; the last good
    checkpoint is kept and ``run.json`` says ``diverged`` (``failed`` for other training errors).

    Example:
        >>> import tempfile
        >>> from landscape import TrainConfig, train
        >>> run = train(TrainConfig(dataset="synthetic", model="mlp", epochs=2,
        ...                         out=tempfile.mkdtemp()), progress=False)
        >>> sorted(p.name for p in run.iterdir())
        ['epoch_0001.pt', 'epoch_0002.pt', 'last.pt', 'run.json']
    """
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"train() needs a TrainConfig, got {type(cfg).__name__}")
    env = D.env_from_environ()  # under torchrun: DDP over WORLD_SIZE processes; else one process
    device = resolve_device(cfg.device)
    if env.distributed and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    out = Path(cfg.out)
    last = out / "last.pt"
    if last.exists() and not cfg.resume:
        raise TrainingError(
            f"{out} already holds a run (last.pt); pass resume=True (--resume) to continue it or "
            "choose another --out; nothing was overwritten"
        )
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    own_group = env.distributed and not torch.distributed.is_initialized()
    level = log.level
    if not env.is_main:
        log.setLevel(logging.WARNING)  # one log: rank 0's
    try:
        backend = D.init_process_group(env, device)
        # Training uses torch's global RNG (init, dropout); fork it so the caller's state is untouched.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            state = _setup(cfg, out, device, progress, env, backend)
            if last.exists():
                _resume(state, last)
                if state.epoch >= cfg.epochs:
                    log.info("%s: already trained for %d epochs", out, state.epoch)
                    return out
            return _run(state)
    finally:
        torch.set_num_threads(threads_before)  # the caller's setting, also after errors
        log.setLevel(level)
        if own_group:
            D.destroy_process_group()


def _setup(cfg: TrainConfig, out: Path, device: torch.device, progress: bool,
           env: D.DistEnv | None = None, backend: str = "none") -> LoopState:
    from landscape.optim import build_optimizer, train_step

    env = env or D.DistEnv()
    train_ds = get_dataset(cfg.dataset, "train", root=cfg.data_root, augment=cfg.augment, **cfg.dataset_kwargs)
    test_ds = get_dataset(cfg.dataset, "test", root=cfg.data_root, **cfg.dataset_kwargs)
    if cfg.channels_last and device.type != "cuda":
        # torch 2.13's oneDNN backward of a strided 1x1 convolution in channels-last format
        # corrupts the heap on one CPU thread (e.g. 4 -> 8 channels, stride 2: "free(): invalid
        # next size"); the format is a GPU speed-up, so it is offered there only.
        raise ConfigError(
            f"TrainConfig.channels_last=True needs a CUDA device (device={cfg.device!r} resolved to "
            f"{device.type}); on CPU use channels_last=False"
        )
    if cfg.channels_last and len(train_ds.input_shape) != 3:
        raise ConfigError(
            f"TrainConfig.channels_last=True needs image inputs (C, H, W); {cfg.dataset} has input shape "
            f"{tuple(train_ds.input_shape)}"
        )
    # m-sharpness needs every batch to split into chunks of m, so a short last batch is dropped.
    drop_last = cfg.sam is not None and cfg.sam.m is not None
    try:  # batch_size is the global batch; each of the world_size processes gets a slice of it
        D.check_batch_size(cfg.batch_size, env.world_size)
    except D.DistributedError as e:
        raise ConfigError(f"TrainConfig: {e}") from None
    if drop_last and (cfg.batch_size // env.world_size) % cfg.sam.m:
        raise ConfigError(
            f"TrainConfig: sam.m={cfg.sam.m} must divide the per-process batch {cfg.batch_size // env.world_size} "
            f"(batch_size={cfg.batch_size} over {env.world_size} processes)"
        )
    steps_per_epoch = D.num_batches(len(train_ds), cfg.batch_size, env.world_size, drop_last)
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(train_ds)} training examples")
    model_kwargs = {"input_shape": list(train_ds.input_shape), "num_classes": train_ds.num_classes, **cfg.model_kwargs}

    torch.manual_seed(cfg.seed)
    net = build_model(cfg.model, **model_kwargs).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(net, cfg)
    model = D.wrap_ddp(net, device, sync_bn=cfg.sync_bn)  # net itself without torchrun
    model = torch.compile(model) if cfg.compile else model
    out.mkdir(parents=True, exist_ok=True)
    cfg_dict = _plain_json(asdict(cfg))
    return LoopState(
        cfg=cfg, cfg_dict=cfg_dict, out=out, device=device, net=net, model=model, optimizer=optimizer,
        train_step=train_step,
        loss_fn=lambda logits, y: F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing),
        train_ds=train_ds, test_ds=test_ds, gen=torch.Generator().manual_seed(cfg.seed),
        steps_per_epoch=steps_per_epoch, drop_last=drop_last,
        optimizer_spec={"name": cfg.sharpness_aware or cfg.optimizer,
                        "kwargs": {"sam": cfg_dict["sam"], "msam": cfg_dict["msam"]},
                        "distributed": {"world_size": env.world_size, "backend": backend}},
        step_kwargs=_precision_kwargs(cfg, device),
        is_main=env.is_main, dist_env=env, backend=backend,
        show_progress=progress,
        check_compiled=cfg.compile,
    )


def _precision_kwargs(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """``train_step`` keywords for ``cfg.precision``: an autocast context and, for fp16, a scaler."""
    prec = Precision.make(cfg.precision, device)
    kwargs: dict[str, Any] = {} if prec.name == "fp32" else {"autocast": prec.autocast}
    if prec.scaler is not None:
        kwargs["scaler"] = prec.scaler
    return kwargs


def _resume(state: LoopState, last: Path) -> None:
    cfg_dict = state.cfg_dict
    try:
        ckpt = load_checkpoint(last, model=state.net)
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume from {last}: {e}") from None
    stored, current = _config_for_compare(ckpt.config, last), _config_for_compare(cfg_dict)
    if stored != current:
        diff = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
        raise TrainingError(
            f"cannot resume {last}: its config differs in {', '.join(diff)}; use another --out "
            "or the same options"
        )
    state.net.to(state.device)
    base = getattr(state.optimizer, "base_optimizer", state.optimizer)
    if not isinstance(ckpt.optimizer_state, dict):
        raise CheckpointError(
            f"{last}: has no optimizer_state (momentum buffers), so the run cannot continue exactly; "
            "start a new run with another --out"
        )
    try:
        base.load_state_dict(ckpt.optimizer_state)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{last}: its optimizer_state does not fit this optimizer: {e}") from None
    rng = ckpt.raw.get("rng")
    _set_rng_state(rng, state.gen, state.device, last)
    scaler = state.step_kwargs.get("scaler")
    if scaler is not None and isinstance(rng.get("grad_scaler"), dict):
        scaler.load_state_dict(rng["grad_scaler"])
    run_json = state.out / "run.json"
    try:
        info = read_json(run_json) if run_json.exists() else {}
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(
            f"{run_json}: not valid JSON ({e}); the file is damaged: move it away to resume "
            "without the earlier history"
        ) from None
    # run.json is written before last.pt, so it may hold one epoch more than last.pt: that
    # epoch is trained again and recorded again.
    state.history = [h for h in _records(info, "history", run_json) if h["epoch"] <= ckpt.epoch]
    state.diagnostics = [d for d in _records(info, "diagnostics", run_json) if d["step"] <= ckpt.step]
    state.epoch, state.step = ckpt.epoch, ckpt.step
    log.info("%s: resuming at epoch %d (step %d)", state.out, ckpt.epoch, ckpt.step)


def _records(info: Any, key: str, path: Path) -> list[dict[str, Any]]:
    """``info[key]``, a list of records with int ``epoch``/``step``; a clear error naming the file."""
    records = info.get(key, []) if isinstance(info, dict) else None
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and isinstance(r.get("epoch"), int) and isinstance(r.get("step"), int) for r in records
    ):
        raise CheckpointError(
            f"{path}: {key!r} is not a list of records with integer 'epoch' and 'step'; the file is "
            "damaged: move it away to resume without the earlier history"
        )
    return records


def _plain_json(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=list))


def _run(state: LoopState) -> Path:
    cfg = state.cfg
    _write_run(state, "running")
    state.bar = Progress((cfg.epochs - state.epoch) * state.steps_per_epoch, f"train {state.out.name}",
                         enabled=state.show_progress and state.is_main)
    try:
        while state.epoch < cfg.epochs:
            _epoch(state)
    except TrainingError as e:
        _write_run(state, e.status, error=str(e))
        raise
    finally:
        state.bar.close()
    _write_run(state, "done")
    return state.out


def _batches(state: LoopState) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This epoch's training batches, on the device (the data order comes from ``state.gen``)."""
    cfg = state.cfg
    # every rank draws the same global batches and keeps its slice (one process: the whole batch)
    for x, y in D.sharded_batches(state.train_ds, cfg.batch_size, state.dist_env, shuffle=True, generator=state.gen,
                                  augment=cfg.augment, drop_last=state.drop_last):
        x = x.to(state.device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, y.to(state.device, non_blocking=True)


def _epoch(state: LoopState) -> None:
    from landscape.optim.bn import recalibrate_bn

    cfg = state.cfg
    state.model.train()
    if cfg.msam is not None:
        state.optimizer.rho_active = not (cfg.msam.warmup_no_rho and state.epoch < cfg.warmup_epochs)
    t0 = time.monotonic()
    loss_sum = torch.zeros((), dtype=torch.float64, device=state.device)
    correct = torch.zeros((), dtype=torch.long, device=state.device)
    for x, y in _batches(state):
        loss, logits = _step(state, x, y)
        loss_sum += loss.double() * y.shape[0]
        correct += (logits.argmax(1) == y).sum()
    if cfg.msam is not None and cfg.msam.recalibrate_bn:
        # BatchNorm statistics accumulated at shifted weights (MSAM Section 2.4);
        # re-estimate them at the weights that are evaluated and saved.
        recalibrate_bn(state.net, ((x.to(state.device), y) for x, y in state.train_ds.batches(cfg.batch_size)))
    test = evaluate(state.net, state.test_ds, max(cfg.batch_size, 256), state.device)
    state.epoch += 1
    sums = D.reduce_metrics({"loss": loss_sum, "correct": correct})  # over ranks (one process: as is)
    metrics = {
        "train_loss": sums["loss"] / len(state.train_ds),
        "train_acc": sums["correct"] / len(state.train_ds),
        "test_loss": test["loss"],
        "test_acc": test["acc"],
        "lr": state.optimizer.param_groups[0]["lr"],
    }
    # Timings go to run.json only: checkpoint bytes depend on config, seed and data alone.
    state.history.append({"epoch": state.epoch, "step": state.step, **metrics, "seconds": time.monotonic() - t0})
    # run.json first: a kill between the two writes leaves run.json one epoch ahead of last.pt,
    # and the resumed run redoes and re-records that epoch (never one missing from the history).
    _write_run(state, "running")
    names = ["last.pt"]
    if state.epoch % cfg.save_every == 0 or state.epoch == cfg.epochs:
        names.insert(0, f"epoch_{state.epoch:04d}.pt")
    _save(state, names, metrics)
    log.info("%s epoch %d/%d: train loss %.4f acc %.4f | test loss %.4f acc %.4f",
             state.out.name, state.epoch, cfg.epochs, metrics["train_loss"], metrics["train_acc"],
             metrics["test_loss"], metrics["test_acc"])


def _step(state: LoopState, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = state.cfg
    lr = cfg.lr * lr_factor(cfg, state.step, state.steps_per_epoch)
    for g in state.optimizer.param_groups:
        g["lr"] = lr
    if state.check_compiled:
        _check_compiled(state, x, y)
    loss, logits = state.train_step(state.model, state.optimizer, x, y, state.loss_fn, **state.step_kwargs)
    if state.dist_env.distributed:  # the global batch's loss, so every rank takes the same decisions
        loss = D.all_reduce_mean_([loss.detach().clone()])[0]
    loss_value = loss.item()  # the one host sync per step: divergence check and progress
    if not math.isfinite(loss_value):
        raise DivergedError(
            f"loss became {loss_value} at epoch {state.epoch + 1}, step {state.step + 1}; training "
            f"stopped. The last good checkpoint is {state.out / 'last.pt'} (if any epoch "
            "finished). Lower the learning rate or rho."
        )
    state.step += 1
    if cfg.diagnostics_every and state.step % cfg.diagnostics_every == 0:
        _record_diagnostics(state, loss_value, lr)
    if cfg.save_every_steps and state.step % cfg.save_every_steps == 0:
        _save(state, [f"step_{state.step:08d}.pt"], {"train_loss": loss_value, "lr": lr})
    state.bar.update(postfix=f"epoch {state.epoch + 1} loss {loss_value:.3f}")
    return loss, logits


def _record_diagnostics(state: LoopState, loss_value: float, lr: float) -> None:
    """One ``run.json`` diagnostics record: the step's loss and the optimizer's ``last_stats``.

    SAM/MSAM expose ``last_stats`` (0-d tensors: ``eps_norm``, ``grad_cosine``,
    ``loss_perturbed``, MSAM ``momentum_cosine``); for SAM, ``sharpness`` = L(w+eps) - L(w) from
    the two losses the step computed anyway. One host sync for all of them, only on recorded steps.
    """
    entry: dict[str, Any] = {"epoch": state.epoch + 1, "step": state.step, "lr": lr, "loss": loss_value}
    stats = getattr(state.optimizer, "last_stats", None)
    if stats:
        names = sorted(stats)
        values = torch.stack([torch.as_tensor(stats[k]).detach().reshape(()).double() for k in names])
        values = D.all_reduce_mean_([values])[0].cpu().tolist()  # means over ranks
        entry.update(zip(names, values))
        if "loss_perturbed" in entry and state.cfg.sam is not None:
            # SAM's step loss is L(w) (its first pass); MSAM's only pass is at the shifted
            # weights, so there the difference of the two would not be L(w+eps) - L(w).
            entry["sharpness"] = entry["loss_perturbed"] - loss_value
    state.diagnostics.append(entry)


def _check_compiled(state: LoopState, x: torch.Tensor, y: torch.Tensor) -> None:
    """Compare the compiled model's loss with eager on the first batch (no side effects).

    Train mode as in the step (BatchNorm batch statistics; the running statistics are restored
    afterwards), dropout off for the check because compiled code draws its own random masks.
    """
    state.check_compiled = False
    buffers = [(b, b.detach().clone()) for b in state.net.buffers()]
    dropouts = [m for m in state.net.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]
    ctx = state.step_kwargs.get("autocast", contextlib.nullcontext)
    losses = []
    try:
        for m in dropouts:
            m.eval()
        for module in (state.net, state.model):
            try:
                with torch.no_grad(), ctx():
                    losses.append(float(state.loss_fn(module(x), y)))
            except Exception as e:  # noqa: BLE001 - torch.compile's backends raise many kinds
                if module is state.net:
                    raise
                raise TrainingError(
                    f"compile=True: torch.compile failed on the first batch ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); train without --compile"
                ) from e
            finally:
                for b, saved in buffers:
                    b.copy_(saved)
    finally:
        for m in dropouts:
            m.train()
    eager, compiled = losses
    tol = 1e-4 if state.cfg.precision == "fp32" else 2e-2
    if not math.isclose(eager, compiled, rel_tol=tol, abs_tol=tol):
        raise TrainingError(
            f"compile=True: the compiled model's loss on the first batch is {compiled:.6g}, eager gives "
            f"{eager:.6g} (tolerance {tol:g}); train without --compile"
        )
    log.info("%s: torch.compile loss %.6g matches eager %.6g on the first batch", state.out.name, compiled, eager)


def _save(state: LoopState, names: list[str], metrics: dict[str, float]) -> None:
    if not state.is_main:
        return
    kwargs = dict(optimizer=state.optimizer, step=state.step, epoch=state.epoch, metrics=metrics,
                  config=state.cfg_dict, optimizer_spec=state.optimizer_spec,
                  rng=_rng_state(state))
    for name in names:
        save_checkpoint(state.out / name, state.net, **kwargs)


def _write_run(state: LoopState, status: str, **extra: Any) -> None:
    if not state.is_main:
        return
    info: dict[str, Any] = {"config": state.cfg_dict, "history": state.history,
                            "distributed": {"world_size": state.dist_env.world_size, "backend": state.backend}}
    if state.cfg.diagnostics_every or state.diagnostics:
        info["diagnostics"] = state.diagnostics
    write_json(state.out / "run.json", {**info, "status": status, **extra})
