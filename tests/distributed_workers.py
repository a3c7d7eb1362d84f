"""Rank processes for tests/test_distributed.py, started with torchrun's environment.

    RANK=r WORLD_SIZE=W LOCAL_RANK=r MASTER_ADDR=127.0.0.1 MASTER_PORT=p \\
        python tests/distributed_workers.py SCENARIO OUT_DIR

Scenarios: ``train`` (train the tiny model of :func:`tiny_setup` for EPOCHS epochs and save
this rank's parameters), ``pyro_param`` (the same for a user's pair of functions whose
parameters are ``pyro.param`` statements made on the first call), ``die`` (rank 1 exits at
once) and ``stall`` (rank 1 sleeps, never joining a collective): rank 0 records the error
it gets in ``error_rank0.txt``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyrovae import VAE, Trainer  # noqa: E402
from pyrovae.training import distributed  # noqa: E402

SEED, EPOCHS, GLOBAL_BATCH, LR = 3, 2, 16, 1e-2


def tiny_setup():
    """Data (64 images 1x4x4, fixed) and the model every rank and the reference build."""
    data = torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(0)).round()
    pyro.set_rng_seed(SEED)
    vae = VAE((1, 4, 4), z_dim=2, hidden=(8,), likelihood="bernoulli")
    return data, vae


def main(scenario: str, out: Path) -> None:
    torch.set_num_threads(1)
    ctx = replace(distributed.from_environment(), seed=SEED)
    timeout = float(os.environ.get("TIMEOUT", 30))
    created = distributed.init(ctx, torch.device("cpu"), timeout_s=timeout)
    if scenario == "die" and ctx.rank == 1:
        os._exit(3)
    if scenario == "stall" and ctx.rank == 1:  # alive, but never joins a collective
        time.sleep(float(os.environ["TIMEOUT"]) * 4)
        (out / "woke_rank1.txt").write_text("woke")
        os._exit(4)
    if scenario == "pyro_param":  # a user's pair of functions, lazy pyro.param parameters
        from tests.user_models import pca_guide, pca_model

        data = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
        trainer = Trainer(model=pca_model, guide=pca_guide, lr=LR, distributed=ctx)
        trainer.fit(distributed.shard(data, ctx, equal=True), EPOCHS,
                    distributed.local_batch_size(GLOBAL_BATCH, ctx), progress=False)
        torch.save(trainer.pair.state_dict(), out / f"rank{ctx.rank}.pt")
        distributed.shutdown(created)
        return
    data, vae = tiny_setup()
    shard = distributed.shard(data, ctx, equal=True)
    batch = distributed.local_batch_size(GLOBAL_BATCH, ctx)
    try:
        trainer = Trainer(vae, lr=LR, compile="none", distributed=ctx)  # DDP: a broadcast
        trainer.fit(shard, EPOCHS, batch, test_x=distributed.shard(data, ctx, equal=False),
                    progress=False)
    except Exception as error:  # 'die', 'stall': what does the survivor see?
        if scenario == "train":
            raise
        (out / f"error_rank{ctx.rank}.txt").write_text(f"{type(error).__name__}: {error}")
        os._exit(0)
    torch.save({"params": [p.detach() for p in vae.parameters()],
                "grads": [p.grad.detach() for p in vae.parameters()],  # the last step's
                "history": trainer.history}, out / f"rank{ctx.rank}.pt")
    distributed.shutdown(created)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
