"""Data-parallel training over torch.distributed (Gloo, two CPU processes on this machine)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

from pyrovae.components.data import DeviceBatches
from pyrovae.training import distributed

sys.path.insert(0, str(Path(__file__).parent))
import distributed_workers as workers  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(workers.__file__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_env(rank: int, world: int, port: int, **extra) -> dict:
    return dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                PYTHONPATH=str(REPO), **extra)


def run_ranks(scenario: str, out: Path, world: int = 2, timeout: float = 120, **extra):
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), scenario, str(out)],
                              env=rank_env(r, world, port, **extra), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(world)]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:  # none left running when a rank timed out
            p.kill()
    return [p.returncode for p in procs], outputs


def reference_run(world: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float]]:
    """One process doing what the ranks do together: per step, each virtual rank draws its
    batch and noise from its own RNG stream; their gradients are summed; one Adam step."""
    data, vae = workers.tiny_setup()
    from pyrovae.inference.estimators import build_estimator

    estimator = build_estimator("trace")
    params = list(vae.parameters())
    optimizer = torch.optim.Adam(params, lr=workers.LR, fused=True)
    ctxs = [distributed.Distributed(r, world, r, workers.SEED) for r in range(world)]
    shards = [distributed.shard(data, ctx, equal=True) for ctx in ctxs]
    batch = workers.GLOBAL_BATCH // world
    losses = []
    for epoch in range(1, workers.EPOCHS + 1):
        states, iters = [], []
        for ctx, shard in zip(ctxs, shards):
            pyro.set_rng_seed(distributed.rank_seed(ctx.seed, epoch, ctx.rank))
            states.append(torch.get_rng_state())
            iters.append(iter(DeviceBatches(shard, batch)))
        total = 0.0
        for _ in range(len(shards[0]) // batch):
            optimizer.zero_grad(set_to_none=True)
            for r in range(world):
                torch.set_rng_state(states[r])
                x = next(iters[r])
                with pyro.validation_enabled(False):
                    loss = estimator.differentiable_loss(vae.model, vae.guide, x)
                loss.backward()
                total += float(loss.detach())
                states[r] = torch.get_rng_state()
            optimizer.step()
        losses.append(-total / (len(shards[0]) // batch * workers.GLOBAL_BATCH))
    return [p.detach() for p in params], [p.grad.detach() for p in params], losses


def test_two_ranks_match_one_process_on_the_concatenated_batches(tmp_path):
    codes, outputs = run_ranks("train", tmp_path)
    assert codes == [0, 0], outputs
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)  # DDP + the same Adam step: bit-identical on both ranks
    def metrics(rank):  # all but the wall time, which each rank measures itself
        return [{k: v for k, v in m.items() if k != "seconds"} for m in rank["history"]]

    assert metrics(ranks[0]) == metrics(ranks[1])  # reduced over the ranks
    params, grads, train_elbos = reference_run(world=2)
    for got, want in zip(ranks[0]["params"], params):
        # float sums in another order (all-reduce vs accumulate), through 8 Adam steps
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the last step's gradient is the sum over both ranks' data (Adam alone would not
    # notice a wrong constant factor: its steps are scale-free)
    for got, want in zip(ranks[0]["grads"], grads):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)
        assert want.abs().max() > 1e-3  # a gradient that a factor of 2 would change
    for got, want in zip(ranks[0]["history"], train_elbos):
        assert got["train_elbo"] == pytest.approx(want, rel=1e-5)
    # and training moved the parameters (the comparison is not between two initial states)
    initial = workers.tiny_setup()[1]
    assert all(not torch.allclose(p, q) for p, q in zip(initial.parameters(), params))


def test_ddp_trains_a_users_pyro_param_pair_in_step_on_every_rank(tmp_path):
    """The parameters found on the first call are DDP's too: each rank sees other data, so
    without the all-reduce their parameters would part after the first step."""
    codes, outputs = run_ranks("pyro_param", tmp_path)
    assert codes == [0, 0], outputs
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert set(ranks[0]) == {f"pyro.param:{n}" for n in ("W", "b", "noise", "A", "c",
                                                          "q_scale")}
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), name
    assert ranks[0]["pyro.param:b"].abs().max() > 1e-3  # trained: b starts at zeros


def test_a_dead_rank_stops_the_others_with_an_error_not_a_hang(tmp_path):
    codes, outputs = run_ranks("die", tmp_path, timeout=120, TIMEOUT="10")
    assert codes == [0, 3], outputs  # rank 0 caught an error and recorded it
    # Gloo says "closed" or "reset" by peer, depending on when the dead rank's socket went
    assert re.search(r"(closed|reset) by peer", (tmp_path / "error_rank0.txt").read_text())


@pytest.mark.slow  # about 40 s: rank 1 sleeps 20 s
def test_a_stalled_rank_makes_the_others_fail_after_the_timeout(tmp_path):
    codes, outputs = run_ranks("stall", tmp_path, timeout=120, TIMEOUT="5")
    assert codes == [0, 4], outputs
    error = tmp_path / "error_rank0.txt"
    assert "Timed out" in error.read_text(), outputs
    # rank 0 gave up (after 5 s) while rank 1 still slept (20 s): the timeout, not the peer
    assert error.stat().st_mtime < (tmp_path / "woke_rank1.txt").stat().st_mtime


def test_sharding_and_batch_split():
    x = torch.arange(10.0)
    ctxs = [distributed.Distributed(r, 3, r) for r in range(3)]
    shards = [distributed.shard(x, c, equal=True) for c in ctxs]
    assert [s.tolist() for s in shards] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert [len(distributed.shard(x, c, equal=False)) for c in ctxs] == [4, 3, 3]
    assert distributed.local_batch_size(12, ctxs[0]) == 4
    with pytest.raises(ValueError, match="batch size 10 is not divisible by the 3 ranks"):
        distributed.local_batch_size(10, ctxs[0])
    seeds = {distributed.rank_seed(0, e, r) for e in range(1, 50) for r in range(8)}
    assert len(seeds) == 49 * 8


def test_environment_parsing():
    assert distributed.from_environment({}) == distributed.SINGLE
    ctx = distributed.from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert ctx.enabled and not ctx.is_main and ctx.world_size == 2
    with pytest.raises(ValueError, match="RANK=2 is not in"):
        distributed.from_environment({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="must be integers"):
        distributed.from_environment({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="WORLD_SIZE is set but RANK is not"):
        distributed.from_environment({"WORLD_SIZE": "2"})


def test_guards_that_hold_on_every_rank_alike():
    two = distributed.Distributed(0, 2, 0)
    with pytest.raises(ValueError, match="the test set has 1 images, fewer than the 2 ranks"):
        distributed.check_shardable(1, two, "the test set")
    distributed.check_shardable(2, two, "the test set")
    with pytest.raises(ValueError, match="timeout must be > 0 seconds"):
        distributed.init(two, torch.device("cpu"), timeout_s=0)
    # one process: nothing to join, so nothing for shutdown to leave
    assert distributed.init(distributed.SINGLE, torch.device("cpu"), 60) is False


def test_cli_under_torchrun_then_resume_in_one_process(tmp_path):
    out = tmp_path / "run"
    common = ["--dataset", "digits", "--z-dim", "2", "--hidden", "16", "--batch-size", "64",
              "--device", "cpu", "--out", str(out), "--dist-timeout", "60"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc-per-node", "2", "-m", "pyrovae", "train", "--epochs", "2"]
    done = subprocess.run(launch + common, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]  # one writer: no line twice
    assert json.loads((out / "environment.json").read_text())["world_size"] == 2
    assert (out / "figures" / "samples.png").is_file()
    resumed = subprocess.run([sys.executable, "-m", "pyrovae", "train", "--epochs", "3",
                              "--resume"] + common, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert json.loads((out / "environment.json").read_text())["world_size"] == 1
    # evaluation split over two ranks: every test image counted once, on rank 0's report
    evaluate = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "pyrovae", "evaluate", str(out), "--device",
                "cpu", "--nll-samples", "8", "--limit", "101"]
    done = subprocess.run(evaluate, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "evaluation.json").read_text())
    assert report["world_size"] == 2 and report["n_test"] == 101 and report["n_data"] == 101
    alone = subprocess.run([sys.executable, "-m", "pyrovae", "evaluate", str(out), "--device",
                            "cpu", "--nll-samples", "8", "--limit", "101"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    single = json.loads((out / "evaluation.json").read_text())
    # other draws, same quantity: the two estimates agree within their standard errors
    assert abs(report["test_nll"] - single["test_nll"]) < 4 * (
        report["test_nll_mc_se"] ** 2 + single["test_nll_mc_se"] ** 2) ** 0.5 + 0.05
