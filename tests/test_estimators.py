"""The sync-free Trace_ELBO loss equals Pyro's, and a training step never syncs."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae.inference.estimators import ESTIMATORS, build_estimator
from pyrovae.models.vae import VAE
from pyrovae.training.sync_guard import HostSyncError, SyncGuard
from pyrovae.training.trainer import FastStepper, Trainer


def grads_of(vae):
    return [p.grad.clone() for p in vae.parameters()]


@pytest.mark.parametrize("likelihood,particles", [("gaussian", 1), ("bernoulli", 3)])
def test_loss_and_gradient_equal_pyro_trace_elbo_on_a_fixed_draw(tiny_images, likelihood,
                                                                  particles):
    grey, binary = tiny_images
    x = binary[:6] if likelihood == "bernoulli" else grey[:6]
    vae = VAE((1, 4, 4), z_dim=3, hidden=(8,), likelihood=likelihood)
    estimator = build_estimator("trace", particles)

    pyro.set_rng_seed(7)
    ours = estimator.differentiable_loss(vae.model, vae.guide, x)
    ours.backward()
    our_grads = grads_of(vae)
    vae.zero_grad()

    pyro.set_rng_seed(7)
    theirs = pyro.infer.Trace_ELBO(num_particles=particles).loss_and_grads(
        vae.model, vae.guide, x)
    assert ours.item() == pytest.approx(theirs, rel=1e-6)
    for mine, pyros in zip(our_grads, grads_of(vae)):
        torch.testing.assert_close(mine, pyros, rtol=1e-5, atol=1e-6)


class _NonReparam(dist.Normal):
    has_rsample = False


def test_score_function_sites_get_pyros_surrogate():
    """A non-reparameterised guide site: value and score-function gradient as Pyro's."""
    loc = torch.tensor(0.3, requires_grad=True)

    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        pyro.sample("z", _NonReparam(loc, 1.0))

    estimator = build_estimator("trace")
    pyro.set_rng_seed(3)
    ours = estimator.differentiable_loss(model, guide)
    (our_grad,) = torch.autograd.grad(ours, loc)
    pyro.set_rng_seed(3)
    theirs = pyro.infer.Trace_ELBO().differentiable_loss(model, guide)
    (pyro_grad,) = torch.autograd.grad(theirs, loc)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    assert our_grad.item() == pytest.approx(pyro_grad.item(), rel=1e-6)
    assert our_grad.item() != 0.0


def test_fast_and_svi_steppers_train_the_same_tensors(tiny_images):
    grey, _ = tiny_images
    results = []
    for stepper in ("fast", "svi"):
        pyro.set_rng_seed(0)
        vae = VAE((1, 4, 4), z_dim=2, hidden=(8,))
        trainer = Trainer(vae, "trace", lr=1e-2, stepper=stepper, clip_norm=5.0)
        pyro.set_rng_seed(1)
        trainer.fit(grey, epochs=3, batch_size=10, progress=False)
        results.append(([p.detach().clone() for p in vae.parameters()], trainer.history))
    (fast_params, fast_history), (svi_params, svi_history) = results
    for a, b in zip(fast_params, svi_params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(fast_history, svi_history):
        assert a["train_elbo"] == pytest.approx(b["train_elbo"], rel=1e-5)


@pytest.mark.parametrize("name", ESTIMATORS.names())
@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_fast_step_makes_no_host_device_sync(tiny_images, name, likelihood):
    """A whole fast step (loss, backward, clipping, NaN guard, fused Adam) passes the guard."""
    grey, binary = tiny_images
    x = binary[:8] if likelihood == "bernoulli" else grey[:8]
    vae = VAE((1, 4, 4), z_dim=2, hidden=(8,), likelihood=likelihood)
    stepper = FastStepper(vae, build_estimator(name), lr=1e-3, clip_norm=1.0)
    with SyncGuard():
        stepper.step(x)
        stepper.step(x)
    assert stepper.take_epoch().loss_sum > 0


def test_sync_guard_catches_item_and_data_dependent_shapes():
    t = torch.tensor([0.0, 1.0, 2.0])
    for read in (lambda: t.sum().item(), lambda: bool(t.sum() > 0), lambda: t[t > 0],
                 lambda: torch.nonzero(t)):
        with SyncGuard(), pytest.raises(HostSyncError, match="host-device synchronisation"):
            read()
