"""Compile modes: the CUDA-graph fast path, its fallbacks, and (on CUDA) its agreement."""

import logging

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae.inference.estimators import build_estimator
from pyrovae.models.vae import VAE
from pyrovae.training.steppers import graph_capturable
from pyrovae.training.trainer import Trainer

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class NonReparamVAE(VAE):
    """The same VAE with a score-function (non-reparameterised) guide sample."""

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", _NoRsample(loc, scale).to_event(1))


class _NoRsample(dist.Normal):
    has_rsample = False


def test_auto_is_eager_on_the_cpu_and_graph_is_refused(tiny_images, caplog):
    grey, _ = tiny_images
    vae = VAE((1, 4, 4), z_dim=2, hidden=(8,))
    with caplog.at_level(logging.INFO, logger="pyrovae.training.step_mode"):
        Trainer(vae, compile="auto").fit(grey, epochs=1, batch_size=8, progress=False)
    assert "eager training: device is cpu, 5 steps (fewer than 500" in caplog.text
    with pytest.raises(ValueError, match="compile='graph' is not possible here: device is cpu"):
        Trainer(vae, compile="graph").fit(grey, epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError,
                       match="compile must be one of auto, none, graph, trace, inductor"):
        Trainer(vae, compile="jit")


def test_score_function_guides_are_not_captured(tiny_images):
    grey, _ = tiny_images
    estimator = build_estimator("trace")
    ok, reason = graph_capturable(NonReparamVAE((1, 4, 4), z_dim=2, hidden=(8,)), estimator,
                                  grey[:4], torch.device("cuda"))
    assert not ok and "guide site 'z' is not reparameterised" in reason
    ok, reason = graph_capturable(VAE((1, 4, 4), z_dim=2, hidden=(8,)), estimator, grey[:4],
                                  torch.device("cuda"))
    assert ok, reason


def test_capturability_check_leaves_the_rng_alone(tiny_images):
    grey, _ = tiny_images
    vae = VAE((1, 4, 4), z_dim=2, hidden=(8,))
    state = torch.get_rng_state()
    graph_capturable(vae, build_estimator("trace"), grey[:4], torch.device("cuda"))
    assert torch.equal(state, torch.get_rng_state())


def train_on_cuda(compile, epochs=15, seed=0):
    from pyrovae.components.data import load_dataset

    data = load_dataset("digits").to("cuda")
    pyro.set_rng_seed(seed)
    vae = VAE(data.image_shape, z_dim=2, hidden=(256,)).to("cuda")
    trainer = Trainer(vae, lr=3e-3, compile=compile)
    trainer.fit(data.train_x, epochs, batch_size=64, test_x=data.test_x, progress=False)
    return trainer


@cuda
def test_cuda_graph_and_eager_training_agree_in_distribution():
    graph, eager = train_on_cuda("graph"), train_on_cuda("none")
    assert graph.stepper.graph is not None and eager.stepper.graph is None
    # different draws after the warm-up, so not equal: the same curve within noise
    for g, e in zip(graph.history[5:], eager.history[5:]):
        assert abs(g["test_elbo"] - e["test_elbo"]) < 6.0, (g, e)
    assert graph.history[-1]["test_elbo"] > graph.history[0]["test_elbo"] + 30


@cuda
def test_graph_replays_draw_fresh_noise():
    trainer = train_on_cuda("graph", epochs=1)
    stepper = trainer.stepper
    stepper.take_epoch()  # reset the sums
    losses = []
    for _ in range(3):
        for p, saved in zip(stepper.params, [p.detach().clone() for p in stepper.params]):
            p.data.copy_(saved)
        stepper.graph.replay()
        losses.append(stepper.take_epoch().loss_sum)
    assert len(set(losses)) == 3, losses


@cuda
def test_cuda_step_has_no_host_sync_including_adam():
    from pyrovae.training.sync_guard import SyncGuard

    trainer = train_on_cuda("none", epochs=1)
    x = torch.rand(64, 1, 8, 8, device="cuda")
    with SyncGuard():
        trainer.stepper.step(x)  # capturable Adam included


def first_step_change(trainer, x):
    """Largest parameter change of one step (Adam's first step moves each weight by ~lr)."""
    before = [p.detach().clone() for p in trainer.vae.parameters()]
    trainer.stepper.step(x)
    return max(float((p.detach() - b).abs().max())
               for p, b in zip(trainer.vae.parameters(), before))


@pytest.mark.parametrize("stepper", ["fast", "svi"])
def test_set_lr_sets_the_step_size(tiny_images, stepper):
    grey, _ = tiny_images
    pyro.set_rng_seed(0)
    trainer = Trainer(VAE((1, 4, 4), z_dim=2, hidden=(8,)), lr=1e-3, stepper=stepper,
                      compile="none")
    trainer.set_lr(0.02)
    # Adam's first update is lr * m / (sqrt(v) + eps) = lr * sign(g) for every nonzero g
    assert first_step_change(trainer, grey[:8]) == pytest.approx(0.02, rel=1e-3)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        trainer.set_lr(0.0)


def test_adam_options_reach_the_optimiser_and_are_checked():
    vae = VAE((1, 4, 4), z_dim=2, hidden=(8,))
    group = Trainer(vae, adam_betas=(0.5, 0.9), adam_eps=1e-4).stepper.optimizer.param_groups[0]
    assert group["betas"] == (0.5, 0.9) and group["eps"] == 1e-4
    with pytest.raises(ValueError, match="adam_betas must be two numbers in"):
        Trainer(vae, adam_betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="adam_eps must be a finite number > 0"):
        Trainer(vae, adam_eps=-1.0)


def test_the_learning_rate_survives_a_checkpoint(tiny_images):
    grey, _ = tiny_images
    trainer = Trainer(VAE((1, 4, 4), z_dim=2, hidden=(8,)), lr=1e-3)
    trainer.set_lr(3e-4)
    trainer.fit(grey, 1, 8, progress=False)
    restored = Trainer(VAE((1, 4, 4), z_dim=2, hidden=(8,)), lr=1e-3)
    restored.load_state_dict(trainer.state_dict())
    assert float(restored.stepper.optimizer.param_groups[0]["lr"]) == pytest.approx(3e-4)


@cuda
def test_set_lr_reaches_a_captured_graph():
    trainer = train_on_cuda("graph", epochs=1)  # captured during the epoch
    assert trainer.stepper.graph is not None
    x = torch.rand(64, 1, 8, 8, device="cuda").bernoulli()
    trainer.set_lr(1e-6)
    small = first_step_change(trainer, x)
    trainer.set_lr(1e-2)
    large = first_step_change(trainer, x)
    # later Adam steps are not exactly lr-sized, but their size scales with lr
    assert small < 1e-5 and large > 1e-3, (small, large)
    restored = train_on_cuda("none", epochs=1)
    restored.load_state_dict(trainer.state_dict())
    assert isinstance(restored.stepper.optimizer.param_groups[0]["lr"], torch.Tensor)


def test_svi_set_lr_holds_after_a_resume(tiny_images):
    grey, _ = tiny_images
    trainer = Trainer(VAE((1, 4, 4), z_dim=2, hidden=(8,)), lr=1e-3, stepper="svi")
    trainer.fit(grey, 1, 8, progress=False)
    resumed = Trainer(VAE((1, 4, 4), z_dim=2, hidden=(8,)), lr=1e-3, stepper="svi")
    resumed.load_state_dict(trainer.state_dict())
    resumed.set_lr(0.02)  # before pyro.optim has made the per-parameter optimisers
    resumed.stepper.step(grey[:8])
    rates = {g["lr"] for o in resumed.stepper.optimizer.optim_objs.values()
             for g in o.param_groups}
    assert rates == {0.02}


def test_a_checkpoint_from_another_device_keeps_this_devices_adam(tiny_images):
    grey, _ = tiny_images
    trainer = Trainer(VAE((1, 4, 4), z_dim=2, hidden=(8,)), lr=1e-3)
    trainer.fit(grey, 1, 8, progress=False)
    state = trainer.state_dict()
    for group in state["optimizer"]["param_groups"]:  # as a CUDA run saves them
        group.update(capturable=True, fused=None, lr=5e-4)
    resumed = Trainer(VAE((1, 4, 4), z_dim=2, hidden=(8,)), lr=1e-3)
    resumed.load_state_dict(state)
    group = resumed.stepper.optimizer.param_groups[0]
    assert group["capturable"] is False and group["fused"] is True and group["lr"] == 5e-4
    resumed.fit(grey, 2, 8, progress=False)  # a capturable group would fail on the CPU
