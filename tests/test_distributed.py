"""DDP on CPU (gloo, 2 processes) against one-process references; launcher env and data shards.

One module fixture spawns the 2 processes once and runs every scenario in them (process start-up
dominates on a 2-core box); each test then compares one scenario with its one-process reference
computed here, in float64.
"""

from __future__ import annotations

import json
import logging
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from landscape import distributed as D
from landscape.checkpoint import load_checkpoint
from landscape.config import SAMConfig, TrainConfig
from landscape.data import ArrayDataset
from landscape.optim import MSAM, SAM
from landscape.precision import Precision
from landscape.trainer import train

WORLD = 2
GLOBAL_BATCH = 16
STEPS = 3


# ------------------------------------------------------------------- single-process units
def test_env_from_environ():
    assert D.env_from_environ({}) == D.DistEnv()
    env = D.env_from_environ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (env.world_size, env.rank, env.local_rank, env.distributed, env.is_main) == (4, 3, 1, True, False)
    assert D.env_from_environ({"WORLD_SIZE": "1", "RANK": "0"}).distributed  # torchrun --nproc_per_node=1
    with pytest.raises(D.DistributedError, match="RANK is not"):
        D.env_from_environ({"WORLD_SIZE": "2"})
    with pytest.raises(D.DistributedError, match="RANK=2"):
        D.env_from_environ({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(D.DistributedError, match="WORLD_SIZE='two'"):
        D.env_from_environ({"WORLD_SIZE": "two", "RANK": "0"})
    assert D.init_process_group(D.DistEnv(), torch.device("cpu")) == "none" and not D.active()
    assert D.reduce_metrics({"a": 2.0, "n": torch.tensor(3)}) == {"a": 2.0, "n": 3.0}
    model = nn.Linear(2, 2)
    assert D.wrap_ddp(model, torch.device("cpu")) is model
    assert D.wrap_ddp(model, torch.device("cpu"), sync_bn=True) is model  # one process: nothing to sync


def test_shards_of_global_batches_are_the_one_process_order():
    g = torch.Generator()
    data = ArrayDataset(torch.arange(22.0).view(11, 2), torch.arange(11), 11)
    for drop_last in (False, True):
        one = [y for _, y in D.sharded_batches(data, 4, D.DistEnv(), shuffle=True, generator=g.manual_seed(3),
                                               drop_last=drop_last)]
        assert len(one) == D.num_batches(11, 4, 1, drop_last) == (2 if drop_last else 3)
        per_rank = [[y for _, y in D.sharded_batches(data, 4, D.DistEnv(2, r, r, True), shuffle=True,
                                                     generator=g.manual_seed(3), drop_last=drop_last)]
                    for r in range(2)]
        # the short last batch (3 samples) does not split over 2 ranks: skipped under DDP
        assert len(per_rank[0]) == len(per_rank[1]) == D.num_batches(11, 4, 2, drop_last) == 2
        for b in range(2):
            assert torch.equal(torch.cat([per_rank[0][b], per_rank[1][b]]), one[b])
    with pytest.raises(D.DistributedError, match="batch_size=5.*world size 2"):
        next(D.sharded_batches(data, 5, D.DistEnv(2, 0, 0, True)))


def test_global_order_batch_sampler_matches_one_process():
    one = list(D.GlobalOrderBatchSampler(10, 4, seed=7))
    ranks = [D.GlobalOrderBatchSampler(10, 4, rank=r, world_size=2, seed=7) for r in range(2)]
    got = [list(s) for s in ranks]
    assert [a + b for a, b in zip(*got)] == one and len(ranks[0]) == 3  # the last 2 split: 1 each
    assert len(D.GlobalOrderBatchSampler(11, 4, rank=0, world_size=2)) == 2  # the last 3 do not
    s = D.GlobalOrderBatchSampler(12, 4, rank=0, world_size=2, seed=7)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first and len(first) == 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(12)),
                                         batch_sampler=D.GlobalOrderBatchSampler(12, 4, rank=1, world_size=2, shuffle=False))
    assert [b[0].tolist() for b in loader] == [[2, 3], [6, 7], [10, 11]]
    with pytest.raises(D.DistributedError, match="rank=2"):
        D.GlobalOrderBatchSampler(12, 4, rank=2, world_size=2)


def test_compiled_ddp_model_is_recognised_and_exposes_no_sync(tmp_path):
    """The trainer compiles the DDP wrapper (compile=True); SAM must still find ``no_sync``."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(nn.Linear(2, 2))
        compiled = torch.compile(ddp)  # lazy: nothing is compiled until the first call
        assert D.is_ddp(ddp) and D.is_ddp(compiled) and not D.is_ddp(nn.Linear(2, 2))
        with compiled.no_sync():
            assert not ddp.require_backward_grad_sync
        assert not D.active() and D.world_size() == 1  # one process: no collectives needed
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------- the scenarios
def ln_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def bn_net():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():  # non-trivial gamma/beta (SAM-ON perturbs them)
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.normal_()
    return m


def global_batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL_BATCH, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (GLOBAL_BATCH,), generator=g))
            for _ in range(STEPS)]


BASE = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}
# name -> (model, optimizer factory under DDP, one-process reference factory)
SCENARIOS = {
    "sgd": (ln_net, lambda m: torch.optim.SGD(m.parameters(), **BASE), None),
    "sam_local": (bn_net, lambda m: SAM(m, torch.optim.SGD, rho=0.2, **BASE),
                  lambda m: SAM(m, torch.optim.SGD, rho=0.2, m=GLOBAL_BATCH // WORLD, **BASE)),
    "sam_local_m": (bn_net, lambda m: SAM(m, torch.optim.SGD, rho=0.2, m=4, variant="fisher", **BASE),
                    lambda m: SAM(m, torch.optim.SGD, rho=0.2, m=4, variant="fisher", **BASE)),
    "sam_global": (ln_net, lambda m: SAM(m, torch.optim.SGD, rho=0.2, variant="asam-el-l2", ddp_perturbation="global", **BASE),
                   lambda m: SAM(m, torch.optim.SGD, rho=0.2, variant="asam-el-l2", **BASE)),
    "samon_local": (bn_net, lambda m: SAM(m, torch.optim.SGD, rho=0.5, mask="norm", **BASE),
                    lambda m: SAM(m, torch.optim.SGD, rho=0.5, mask="norm", m=GLOBAL_BATCH // WORLD, **BASE)),
    "samon_global": (ln_net, lambda m: SAM(m, torch.optim.SGD, rho=0.5, mask="norm", ddp_perturbation="global", **BASE),
                     lambda m: SAM(m, torch.optim.SGD, rho=0.5, mask="norm", **BASE)),
    "msam": (ln_net, lambda m: MSAM(m, torch.optim.SGD, rho=0.5, **BASE), None),
}


def _step(model, opt, x, y, **kw):
    if isinstance(opt, (SAM, MSAM)):
        return opt.train_step(model, x, y, F.cross_entropy, **kw)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def _state(model, opt):
    base = getattr(opt, "base_optimizer", opt)
    return {"params": [p.detach().clone() for p in model.parameters()],
            "momentum": [base.state[p]["momentum_buffer"].clone() for p in model.parameters()],
            "stats": {k: v.clone() for k, v in getattr(opt, "last_stats", {}).items()}}


def train_cfg(out, **kw):
    return TrainConfig(dataset="synthetic", dataset_kwargs={"num_samples": 96, "input_shape": [6], "num_classes": 3},
                       model="mlp", model_kwargs={"width": 12, "norm": "layer"}, epochs=3, batch_size=32, lr=0.05,
                       sam=SAMConfig(rho=0.1), ddp_perturbation="global", augment=False, out=str(out), **kw)


class Killed(Exception):
    """Stands for the process being killed in the middle of an epoch."""


def _trainer_runs(rank: int, out: str) -> dict:
    """``landscape.train`` as torchrun runs it: uninterrupted, and killed in epoch 2 then resumed."""
    from landscape import trainer

    os.environ.update({"WORLD_SIZE": str(WORLD), "RANK": str(rank), "LOCAL_RANK": str(rank)})
    writes, records = [], []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    log = logging.getLogger("landscape")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    real_save, real_write, real_step = trainer.save_checkpoint, trainer.write_json, trainer._step
    trainer.save_checkpoint = lambda path, *a, **k: (writes.append(str(path)), real_save(path, *a, **k))[1]
    trainer.write_json = lambda path, *a, **k: (writes.append(str(path)), real_write(path, *a, **k))[1]
    labels = []  # the labels each step saw on this rank

    def recording_step(state, x, y):
        labels.append(y.clone())
        return real_step(state, x, y)

    try:
        trainer._step = recording_step
        trainer.train(train_cfg(os.path.join(out, "full")), progress=False)
        calls = [0]

        def dying_step(state, x, y):
            calls[0] += 1
            if calls[0] == 5:  # epoch 2, step 2 of 3: after epoch 1's checkpoint
                raise Killed
            return real_step(state, x, y)

        trainer._step = dying_step
        try:
            trainer.train(train_cfg(os.path.join(out, "killed")), progress=False)
        except Killed:
            pass
        trainer._step = real_step
        dist.barrier()
        trainer.train(train_cfg(os.path.join(out, "killed")), progress=False)  # the same command again
    finally:
        trainer.save_checkpoint, trainer.write_json, trainer._step = real_save, real_write, real_step
        log.removeHandler(handler)
        for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            os.environ.pop(k)
    try:
        D.wrap_ddp(nn.Linear(2, 2), torch.device("cpu"), sync_bn=True)
        sync_bn_error = ""
    except D.DistributedError as e:
        sync_bn_error = str(e)
    return {"writes": len(writes), "log_records": len(records), "sync_bn_error": sync_bn_error, "labels": labels}


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {"trainer": _trainer_runs(rank, out)}
        torch.set_default_dtype(torch.float64)
        for name, (make_model, make_opt, _) in SCENARIOS.items():
            model = make_model()
            ddp = nn.parallel.DistributedDataParallel(model)
            opt = make_opt(ddp)  # the wrapper is accepted: SAM/MSAM unwrap it
            for x, y in global_batches():
                _step(ddp, opt, D.shard(x, rank, world), D.shard(y, rank, world))
            results[name] = _state(model, opt)
        # BatchNorm under DDP: per-replica statistics, frozen in SAM's second pass
        model = bn_net()
        ddp = nn.parallel.DistributedDataParallel(model)
        x, y = global_batches()[0]
        SAM(ddp, torch.optim.SGD, rho=0.5, **BASE).train_step(ddp, D.shard(x, rank, world), D.shard(y, rank, world),
                                                            F.cross_entropy)
        results["bn"] = {k: v.clone() for k, v in model[1].state_dict().items() if "running" in k or "num_batches" in k}
        # fp16: an inf ascent gradient on rank 1 only must skip the step on both ranks
        model = ln_net().float()
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = SAM(ddp, torch.optim.SGD, rho=0.1, **BASE)
        prec = Precision.make("fp16", "cpu")
        x, y = (t.float() if t.is_floating_point() else t for t in global_batches()[0])
        xs, ys = D.shard(x, rank, world), D.shard(y, rank, world)
        opt.train_step(ddp, xs, ys, F.cross_entropy, autocast=prec.autocast, scaler=prec.scaler)
        before = [p.detach().clone() for p in model.parameters()]
        scale = prec.scaler.get_scale()
        if rank == 1:
            model[0].weight.register_hook(lambda g: torch.full_like(g, math.inf))
        opt.train_step(ddp, xs, ys, F.cross_entropy, autocast=prec.autocast, scaler=prec.scaler)
        results["fp16_skip"] = {
            "unchanged": all(torch.equal(a, b) for a, b in zip(model.parameters(), before)),
            "scale_ratio": prec.scaler.get_scale() / scale,
            "skipped": bool(opt.last_stats["skipped"]),
        }
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, str(tmp / "rendezvous"), str(tmp)), nprocs=WORLD, join=True)
    results = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    results[0]["out"] = tmp
    return results


def reference(name):
    """The scenario in one process on the global batches (the reference optimizer if given)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        make_model, make_opt, make_ref = SCENARIOS[name]
        model = make_model()
        opt = (make_ref or make_opt)(model)
        for x, y in global_batches():
            _step(model, opt, x, y)
        return _state(model, opt)
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_ddp_equals_one_process_reference(ddp_results, name):
    """sgd, msam, *_global: one process on the global batch. *_local: one process with m = the
    per-replica batch (each replica's own perturbation; BatchNorm statistics per replica)."""
    ref = reference(name)
    for rank in range(WORLD):
        got = ddp_results[rank][name]
        for a, b in zip(got["params"], ref["params"]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        # momentum buffers (MSAM's shift direction) are identical on every replica
        for a, b in zip(got["momentum"], ddp_results[0][name]["momentum"]):
            assert torch.equal(a, b)
        for a, b in zip(got["momentum"], ref["momentum"]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    if name.startswith("sam") and name.endswith("global"):
        assert set(ref["stats"]) == set(ddp_results[0][name]["stats"])
        for k in ("eps_norm", "grad_cosine"):  # the same ascent gradient everywhere
            torch.testing.assert_close(ddp_results[0][name]["stats"][k], ref["stats"][k], rtol=1e-9, atol=1e-12)


def test_ddp_local_perturbation_differs_from_global(ddp_results):
    """The two options are different algorithms (otherwise the tests above prove nothing)."""
    a = ddp_results[0]["samon_global"]["params"]
    b = reference("samon_local")["params"]
    assert any(not torch.allclose(u, v, atol=1e-6) for u, v in zip(a, b))
    ref_full = SCENARIOS["sam_local"][1]  # per-replica SAM on the whole batch in one process
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = bn_net()
        opt = ref_full(model)
        for x, y in global_batches():
            _step(model, opt, x, y)
    finally:
        torch.set_default_dtype(old)
    assert any(not torch.allclose(u, v, atol=1e-6) for u, v in zip(model.parameters(), ddp_results[0]["sam_local"]["params"]))


def test_ddp_fp16_inf_on_one_replica_skips_everywhere(ddp_results):
    for rank in range(WORLD):
        got = ddp_results[rank]["fp16_skip"]
        assert got == {"unchanged": True, "scale_ratio": 0.5, "skipped": True}, (rank, got)


def _states_close(a, b, atol):
    sa, sb = a.raw["model_state"], b.raw["model_state"]
    assert sorted(sa) == sorted(sb)  # no "module." prefix
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=atol)
    ma, mb = a.momentum(), b.momentum()
    assert sorted(ma) == sorted(mb)
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], rtol=0, atol=atol)


def test_train_under_ddp_equals_one_process_and_resumes_after_kill(ddp_results, tmp_path, monkeypatch):
    from landscape import trainer

    out = ddp_results[0]["out"]
    labels, real_step = [], trainer._step
    monkeypatch.setattr(trainer, "_step", lambda state, x, y: (labels.append(y.clone()), real_step(state, x, y))[1])
    ref = load_checkpoint(train(train_cfg(tmp_path / "one"), progress=False) / "last.pt")
    # each rank saw its half of every global batch, in the one-process order
    shards = [ddp_results[r]["trainer"]["labels"] for r in range(WORLD)]
    assert len(labels) == len(shards[0]) == 9 and all(len(t) == 16 for t in shards[0] + shards[1])
    for i, y in enumerate(labels):
        assert torch.equal(torch.cat([shards[0][i], shards[1][i]]), y)
    full = load_checkpoint(out / "full" / "last.pt")
    resumed = load_checkpoint(out / "killed" / "last.pt")
    _states_close(full, ref, atol=1e-5)  # float32: the same global batches, reduced in another order
    _states_close(resumed, full, atol=0)  # resume after the kill: exactly the uninterrupted run
    assert full.optimizer_spec["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert ref.optimizer_spec["distributed"] == {"world_size": 1, "backend": "none"}
    info = json.loads((out / "killed" / "run.json").read_text())
    assert info["status"] == "done" and info["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert [h["epoch"] for h in info["history"]] == [1, 2, 3]
    ref_hist = json.loads((tmp_path / "one" / "run.json").read_text())["history"]
    for h, r in zip(info["history"], ref_hist):  # metrics summed over ranks = one process's
        assert h["train_loss"] == pytest.approx(r["train_loss"], rel=1e-4)
        assert h["train_acc"] == pytest.approx(r["train_acc"], abs=1e-9)


def test_only_rank_0_writes_files_and_logs(ddp_results):
    main, other = ddp_results[0]["trainer"], ddp_results[1]["trainer"]
    assert main["writes"] > 0 and main["log_records"] > 0
    assert other["writes"] == 0 and other["log_records"] == 0
    assert sorted(p.name for p in (ddp_results[0]["out"] / "full").iterdir()) == [
        "epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt", "last.pt", "run.json"]
    assert "sync_bn=True needs CUDA" in other["sync_bn_error"]


@pytest.mark.slow
def test_torchrun_landscape_train_unchanged_command(tmp_path):
    """``torchrun --nproc_per_node=2`` around the one-process command line, nothing else changed."""
    import subprocess
    import sys

    args = ["train", "--dataset", "synthetic", "--dataset-kwargs", "num_samples=64", "input_shape=[6]",
            "--model", "mlp", "--model-kwargs", "width=8", "--epochs", "2", "--batch-size", "16",
            "--sam", "sam", "--sam-rho", "0.1", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("WORLD_SIZE", None)
    runs = [("one", [], ["--sam-m", "8"]),  # one process, m-sharpness with m = the per-replica batch
            ("two", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], [])]
    for name, launcher, extra in runs:
        cmd = [sys.executable, *launcher, "-m", "landscape.cli", *args, *extra, "--out", str(tmp_path / name)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (load_checkpoint(tmp_path / n / "last.pt") for n in ("one", "two"))
    assert two.optimizer_spec["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    # the default local perturbation under DDP is one-process m-sharpness with m = 16 / 2
    _states_close(two, one, atol=1e-5)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["status"] == "done"


def test_ddp_sam_bn_statistics_per_replica_and_frozen_in_second_pass(ddp_results):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x, _ = global_batches()[0]
        for rank in range(WORLD):
            ref = bn_net()
            ref(D.shard(x, rank, WORLD))  # one train-mode forward at w on this replica's shard
            got = ddp_results[rank]["bn"]
            assert int(got["num_batches_tracked"]) == 1
            torch.testing.assert_close(got["running_mean"], ref[1].running_mean, rtol=0, atol=1e-15)
            torch.testing.assert_close(got["running_var"], ref[1].running_var, rtol=0, atol=1e-15)
        assert not torch.allclose(ddp_results[0]["bn"]["running_mean"], ddp_results[1]["bn"]["running_mean"])
    finally:
        torch.set_default_dtype(old)


@pytest.mark.slow
def test_torchrun_sigkill_then_same_command_equals_uninterrupted(tmp_path):
    """SIGKILL of the whole torchrun process group once a checkpoint exists, then the same command."""
    import signal
    import subprocess
    import sys
    import time

    args = ["train", "--dataset", "synthetic", "--dataset-kwargs", "num_samples=256", "input_shape=[6]",
            "--model", "mlp", "--model-kwargs", "width=8", "--epochs", "12", "--batch-size", "16",
            "--sam", "sam", "--sam-rho", "0.1", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("WORLD_SIZE", None)

    def cmd(out):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "landscape.cli", *args, "--out", str(out)]

    full = subprocess.run(cmd(tmp_path / "full"), env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    proc = subprocess.Popen(cmd(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not (tmp_path / "killed" / "epoch_0002.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed_mid_run = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)  # launcher and both workers, no clean-up
    proc.wait()
    again = subprocess.run(cmd(tmp_path / "killed"), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert killed_mid_run, "the run finished before it could be killed; raise --epochs"
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "killed" / "last.pt")
    assert a.epoch == b.epoch == 12
    _states_close(b, a, atol=0)
    hist = json.loads((tmp_path / "killed" / "run.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == list(range(1, 13))
