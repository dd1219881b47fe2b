"""The training loop: SGD/AdamW, the SAM family and MSAM; writes checkpoints and ``run.json``.

A run folder holds ``epoch_NNNN.pt`` (every ``save_every`` epochs and the last one),
``last.pt`` (the resume point, rewritten every epoch) and ``run.json`` (config, per-epoch
metrics, status). Same config and seed give bit-identical checkpoints on CPU; a resumed run
gives the same result as an uninterrupted one (RNG and data-order state are checkpointed).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from landscape.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from landscape.config import ConfigError, MSAMConfig, TrainConfig
from landscape.data import ArrayDataset, get_dataset
from landscape.models import build_model
from landscape.progress import Progress
from landscape.results import read_json, write_json

log = logging.getLogger("landscape")

# Config keys that may change between the original run and a resume without changing the run.
RESUME_FREE_KEYS = ("epochs", "out", "resume", "device", "threads", "save_every")


class TrainingError(RuntimeError):
    """Training cannot go on (diverged loss, incompatible resume)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(name)


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


def _config_for_compare(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in RESUME_FREE_KEYS}


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "data": gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(rng: dict[str, Any], gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    gen.set_state(rng["data"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


def train(cfg: TrainConfig, *, progress: bool = True) -> Path:
    """Train a model as ``cfg`` says and return the run folder.

    Resumes from ``<out>/last.pt`` when it exists and ``cfg.resume`` (the stored config must
    match, except for epochs/out/device/threads/save_every). Raises ``TrainingError`` when the
    loss becomes NaN/inf; the last good checkpoint is kept and ``run.json`` says ``diverged``.

    Example:
        >>> import tempfile
        >>> from landscape import TrainConfig, train
        >>> run = train(TrainConfig(dataset="synthetic", model="mlp", epochs=2,
        ...                         out=tempfile.mkdtemp()), progress=False)
        >>> sorted(p.name for p in run.iterdir())
        ['epoch_0001.pt', 'epoch_0002.pt', 'last.pt', 'run.json']
    """
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    if last.exists() and not cfg.resume:
        raise TrainingError(
            f"{out} already holds a run (last.pt); pass resume=True (--resume) to continue it or "
            "choose another --out; nothing was overwritten"
        )
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, out, last, device, progress)
    finally:
        torch.set_num_threads(threads_before)  # the caller's setting, also after errors


def _train(cfg: TrainConfig, out: Path, last: Path, device: torch.device, progress: bool) -> Path:
    from landscape.optim import build_optimizer, train_step

    train_ds = get_dataset(cfg.dataset, "train", root=cfg.data_root, augment=cfg.augment, **cfg.dataset_kwargs)
    test_ds = get_dataset(cfg.dataset, "test", root=cfg.data_root, **cfg.dataset_kwargs)
    model_kwargs = {"input_shape": list(train_ds.input_shape), "num_classes": train_ds.num_classes, **cfg.model_kwargs}
    cfg_dict = _plain_json(asdict(cfg))  # as stored in checkpoints and run.json (tuples -> lists)

    # Training uses torch's global RNG (init, dropout); fork it so the caller's state is untouched.
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, **model_kwargs).to(device)
        gen = torch.Generator().manual_seed(cfg.seed)
        optimizer = build_optimizer(model, cfg)
        history: list[dict[str, Any]] = []
        start_epoch, step = 0, 0
        if last.exists():
            start_epoch, step, history = _resume(last, cfg_dict, model, optimizer, gen, device, out)
            if start_epoch >= cfg.epochs:
                log.info("%s: already trained for %d epochs", out, start_epoch)
                return out
        return _loop(cfg, cfg_dict, model, optimizer, train_step, train_ds, test_ds, gen, device,
                     out, start_epoch, step, history, progress)


def _resume(last, cfg_dict, model, optimizer, gen, device, out):
    try:
        ckpt = load_checkpoint(last, model=model)
    except CheckpointError as e:
        raise TrainingError(f"cannot resume: {e}") from None
    if _config_for_compare(ckpt.config) != _config_for_compare(cfg_dict):
        diff = sorted(
            k for k in set(ckpt.config) | set(cfg_dict)
            if k not in RESUME_FREE_KEYS and ckpt.config.get(k) != cfg_dict.get(k)
        )
        raise TrainingError(
            f"cannot resume {last}: its config differs in {', '.join(diff)}; use another --out "
            "or the same options"
        )
    model.to(device)
    base = getattr(optimizer, "base_optimizer", optimizer)
    base.load_state_dict(ckpt.optimizer_state)
    _set_rng_state(ckpt.raw["rng"], gen, device)
    run_json = out / "run.json"
    history = read_json(run_json)["history"] if run_json.exists() else []
    history = [h for h in history if h["epoch"] <= ckpt.epoch]
    log.info("%s: resuming at epoch %d (step %d)", out, ckpt.epoch, ckpt.step)
    return ckpt.epoch, ckpt.step, history


def _plain_json(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=list))


def _loop(cfg, cfg_dict, model, optimizer, train_step, train_ds, test_ds, gen, device, out,
          start_epoch, step, history, progress):
    from landscape.optim.bn import recalibrate_bn

    # m-sharpness needs every batch to split into chunks of m, so a short last batch is dropped.
    drop_last = cfg.sam is not None and cfg.sam.m is not None
    steps_per_epoch = len(train_ds) // cfg.batch_size if drop_last else math.ceil(len(train_ds) / cfg.batch_size)
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(train_ds)} training examples")
    msam = cfg.msam or MSAMConfig()
    loss_fn = lambda logits, y: F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)  # noqa: E731
    opt_spec = {"name": cfg.optimizer if cfg.sam is None else "sam", "kwargs": {"sam": cfg_dict["sam"], "msam": cfg_dict["msam"]}}

    def write_run(status: str, **extra: Any) -> None:
        write_json(out / "run.json", {"config": cfg_dict, "history": history, "status": status, **extra})

    write_run("running")
    bar = Progress((cfg.epochs - start_epoch) * steps_per_epoch, f"train {out.name}", enabled=progress)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            if cfg.optimizer == "msam":
                optimizer.rho_active = not (msam.warmup_no_rho and epoch < cfg.warmup_epochs)
            t0 = time.monotonic()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            for x, y in train_ds.batches(cfg.batch_size, shuffle=True, generator=gen, augment=cfg.augment,
                                         drop_last=drop_last):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                for g in optimizer.param_groups:
                    g["lr"] = cfg.lr * lr_factor(cfg, step, steps_per_epoch)
                loss, logits = train_step(model, optimizer, x, y, loss_fn)
                loss_value = loss.item()  # the one host sync per step: divergence check and progress
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"loss became {loss_value} at epoch {epoch + 1}, step {step + 1}; training "
                        f"stopped. The last good checkpoint is {out / 'last.pt'} (if any epoch "
                        "finished). Lower the learning rate or rho."
                    )
                loss_sum += loss.double() * y.shape[0]
                correct += (logits.argmax(1) == y).sum()
                step += 1
                bar.update(postfix=f"epoch {epoch + 1} loss {loss_value:.3f}")
            if cfg.optimizer == "msam" and msam.recalibrate_bn:
                # BatchNorm statistics accumulated at shifted weights (MSAM Section 2.4);
                # re-estimate them at the weights that are evaluated and saved.
                recalibrate_bn(model, ((x.to(device), y) for x, y in train_ds.batches(cfg.batch_size)))
            test = evaluate(model, test_ds, max(cfg.batch_size, 256), device)
            metrics = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": loss_sum.item() / len(train_ds),
                "train_acc": correct.item() / len(train_ds),
                "test_loss": test["loss"],
                "test_acc": test["acc"],
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.monotonic() - t0,
            }
            history.append(metrics)
            ckpt_metrics = {k: v for k, v in metrics.items() if k not in ("epoch", "step")}
            rng = _rng_state(gen, device)
            save = dict(optimizer=optimizer, step=step, epoch=epoch + 1, metrics=ckpt_metrics,
                        config=cfg_dict, optimizer_spec=opt_spec, rng=rng)
            if (epoch + 1) % cfg.save_every == 0 or epoch + 1 == cfg.epochs:
                save_checkpoint(out / f"epoch_{epoch + 1:04d}.pt", model, **save)
            save_checkpoint(out / "last.pt", model, **save)
            write_run("running")
            log.info("%s epoch %d/%d: train loss %.4f acc %.4f | test loss %.4f acc %.4f",
                     out.name, epoch + 1, cfg.epochs, metrics["train_loss"], metrics["train_acc"],
                     metrics["test_loss"], metrics["test_acc"])
    except TrainingError as e:
        write_run("diverged", error=str(e))
        raise
    finally:
        bar.close()
    write_run("done")
    return out

