"""Every registered prior, likelihood and guide: shapes, support, gradients, the model, training.

Parametrised over the registries, so a component is under test the moment it is registered.
"""

import itertools
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.util import check_model_guide_match

from pyrovae.components.guides import GUIDES
from pyrovae.components.likelihoods import LIKELIHOODS, build_likelihood
from pyrovae.components.priors import prior_names
from pyrovae.inference.estimators import ESTIMATORS, build_estimator
from pyrovae.models.vae import VAE
from pyrovae.training.steppers import FastStepper
from pyrovae.training.sync_guard import SyncGuard
from pyrovae.training.trainer import Trainer

SHAPE = (1, 4, 4)


def tiny_vae(**components) -> VAE:
    return VAE(SHAPE, z_dim=3, hidden=(8,), **components)


def data_for(likelihood: str, tiny_images, n: int = 8) -> torch.Tensor:
    grey, binary = tiny_images
    if likelihood == "discretized_logistic":  # 8-bit values
        return torch.round(grey[:n] * 255) / 255
    return binary[:n] if likelihood == "bernoulli" else grey[:n]


def assert_every_parameter_has_a_gradient(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", prior_names())
def test_prior_shapes_draws_log_prob_and_gradients(name, batch):
    prior = tiny_vae(prior=name).prior  # attached to its VAE, as training uses it
    distribution = prior((batch,))
    assert distribution.batch_shape == (batch,) and distribution.event_shape == (3,)
    z = distribution.sample()
    assert z.shape == (batch, 3) and torch.isfinite(z).all()
    log_prob = distribution.log_prob(z)
    assert log_prob.shape == (batch,) and torch.isfinite(log_prob).all()
    if list(prior.parameters()):
        log_prob.sum().backward()
        assert_every_parameter_has_a_gradient(prior)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", GUIDES.names())
def test_guide_shapes_draws_log_prob_and_gradients(tiny_images, name, batch):
    vae = tiny_vae(guide=name)
    x = tiny_images[0][:batch]
    q = vae.posterior(x)
    assert q.batch_shape == (batch,) and q.event_shape == (3,) and q.has_rsample
    z = q.rsample()
    assert z.shape == (batch, 3) and torch.isfinite(z).all()
    log_q = q.log_prob(z)
    assert log_q.shape == (batch,) and torch.isfinite(log_q).all()
    (z.square().sum() + log_q.sum()).backward()
    assert_every_parameter_has_a_gradient(vae.q)
    assert vae.encode(x).shape == (batch, 3)
    assert vae.reconstruct(x).shape == x.shape


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", LIKELIHOODS.names())
def test_likelihood_shapes_draws_log_prob_and_gradients(tiny_images, name, batch):
    likelihood = build_likelihood(name)
    raw = torch.randn(batch, 16 * likelihood.params_per_value, requires_grad=True)
    distribution = likelihood(raw, SHAPE)
    assert distribution.batch_shape == (batch,) and distribution.event_shape == SHAPE
    x = distribution.sample()
    assert torch.isfinite(x).all()
    likelihood.check(x)
    data = data_for(name, tiny_images, batch)
    likelihood.check(data)
    log_prob = distribution.log_prob(data)
    assert log_prob.shape == (batch,) and torch.isfinite(log_prob).all()
    log_prob.sum().backward()  # every decoder output (all params_per_value of them) matters
    assert (raw.grad.reshape(batch, likelihood.params_per_value, -1).abs().sum((0, 2)) > 0).all()
    assert_every_parameter_has_a_gradient(likelihood)


@pytest.mark.parametrize("name", LIKELIHOODS.names())
def test_support_check_names_the_range_found_and_allowed(name):
    likelihood = build_likelihood(name)
    x = torch.zeros(2, *SHAPE)  # 0 lies in every support
    bad = -0.25 if not bool(likelihood.in_support(torch.tensor(-0.25))) else math.nan
    x[1, 0, 0, 0] = bad
    with pytest.raises(ValueError) as error:
        likelihood.check(x)
    found = "[-0.25, 0]" if bad == -0.25 else "[nan, nan]"
    assert f"likelihood '{name}' needs data in {likelihood.support_text}; found 1 " \
           f"values outside it (data range {found})" in str(error.value)


def test_bernoulli_on_grey_data_says_to_binarise(tiny_images):
    with pytest.raises(ValueError, match=r"needs data in \{0, 1\} \(binary\); found \d+ values "
                       r"outside it \(data range \[0\.\d+, 0\.9\d+\]\); binarise grey images "
                       r"with --binarize static or dynamic"):
        build_likelihood("bernoulli").check(tiny_images[0])


@pytest.mark.parametrize("prior,likelihood,guide",
                         list(itertools.product(prior_names(), LIKELIHOODS.names(),
                                                GUIDES.names())))
def test_every_combination_passes_validation_and_model_guide_match(tiny_images, prior,
                                                                   likelihood, guide):
    pyro.enable_validation(True)
    vae = tiny_vae(prior=prior, likelihood=likelihood, guide=guide)
    x = data_for(likelihood, tiny_images, 5)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    check_model_guide_match(model_trace, guide_trace, max_plate_nesting=1)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    assert model_trace.nodes["x"]["log_prob"].shape == (5,)
    elbo = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
    assert torch.isfinite(elbo)
    assert vae.sample(2).shape == (2, *SHAPE)


@pytest.mark.parametrize("estimator", ESTIMATORS.names())
@pytest.mark.parametrize("prior,guide", list(itertools.product(prior_names(), GUIDES.names())))
def test_fast_step_is_sync_free_for_every_prior_and_guide(tiny_images, prior, guide, estimator):
    vae = tiny_vae(prior=prior, guide=guide)
    stepper = FastStepper(vae, build_estimator(estimator), lr=1e-3, clip_norm=1.0)
    with SyncGuard():
        stepper.step(tiny_images[0][:8])
        stepper.step(tiny_images[0][:8])
    assert math.isfinite(stepper.take_epoch().loss_sum)


@pytest.mark.parametrize("likelihood", LIKELIHOODS.names())
def test_fast_step_is_sync_free_for_every_likelihood(tiny_images, likelihood):
    stepper = FastStepper(tiny_vae(likelihood=likelihood), build_estimator("trace"), lr=1e-3,
                          clip_norm=None)
    with SyncGuard():
        stepper.step(data_for(likelihood, tiny_images))
    assert math.isfinite(stepper.take_epoch().loss_sum)


LEARNABLE = [("prior", name) for name in prior_names()
             if list(tiny_vae(prior=name).prior.parameters())] + \
            [("q", name) for name in GUIDES.names() if list(tiny_vae(guide=name).q.parameters())]


@pytest.mark.parametrize("stepper", ["fast", "svi"])
@pytest.mark.parametrize("part,name", LEARNABLE)
def test_both_steppers_train_the_components_parameters(tiny_images, part, name, stepper):
    vae = tiny_vae(**{"prior" if part == "prior" else "guide": name})
    module = getattr(vae, part)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    Trainer(vae, "trace", lr=1e-2, stepper=stepper).fit(tiny_images[0], epochs=1,
                                                         batch_size=10, progress=False)
    for n, p in module.named_parameters():
        assert not torch.equal(p, before[n]), f"{part}.{n} was not trained by {stepper}"
