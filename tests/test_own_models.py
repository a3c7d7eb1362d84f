"""Bring your own Pyro model: pairs written as Pyro users write them (tests/user_models.py)
train, evaluate, check and compare with pyrovae, with exact answers where there are some.

Tolerances as in test_linear_gaussian.py: Monte-Carlo means over N float64 draws against
exact numbers by z = (mean - exact) / s.e., |z| <= 4.5 for a value, the Bonferroni limit
t(1e-5 / (2 m)) over m gradient elements; seeds fixed.
"""

import math
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch
from reference import exact_gradients

from pyrovae.inference.check_kl import check_kl, shared_draws
from pyrovae.inference.compare import EstimatorSpec, compare_estimators, format_table
from pyrovae.inference.elbo import ESTIMATORS
from pyrovae.inference.estimators import build_estimator
from pyrovae.inference.evaluation import evaluate_elbo, log_likelihood
from pyrovae.inference.generation import Generator
from pyrovae.inference.pair import PyroPair, as_pair
from pyrovae.inference.statistics import parameter_groups, student_t_quantile
from pyrovae.training.steppers import FastStepper, graph_capturable
from pyrovae.training.sync_guard import SyncGuard
from pyrovae.training.trainer import Trainer
from tests.user_models import (
    NoisyTutorialVAE,
    RootPyroVAE,
    TutorialVAE,
    TwoSiteVAE,
    pca_exact,
    pca_guide,
    pca_model,
    set_exact_posterior,
)

Z_LIMIT = 4.5
DRAWS = 400


@pytest.fixture
def pca_data():
    """40 data of dimension 5 from a linear-Gaussian model, float64."""
    generator = torch.Generator().manual_seed(2)
    z = torch.randn(40, 2, generator=generator, dtype=torch.float64)
    w = torch.randn(5, 2, generator=generator, dtype=torch.float64)
    return z @ w.T + 0.5 * torch.randn(40, 5, generator=generator, dtype=torch.float64)


def pca_pair(x) -> PyroPair:
    return PyroPair(pca_model, pca_guide).setup(x[:2])


def tutorial(pixels=16):
    return TutorialVAE(pixels=pixels, z_dim=2, hidden_dim=8)


def test_a_pair_of_functions_finds_its_lazy_parameters_and_trains(pca_data):
    trainer = Trainer(model=pca_model, guide=pca_guide, lr=1e-2)
    with pytest.raises(RuntimeError, match="parameters are not known yet"):
        _ = trainer.stepper
    history = trainer.fit(pca_data, epochs=3, batch_size=10, progress=False)
    assert all(math.isfinite(m["train_elbo"]) for m in history)
    names = set(trainer.pair.state_dict())
    assert names == {f"pyro.param:{n}" for n in ("W", "b", "noise", "A", "c", "q_scale")}
    # the optimiser trains the very tensors the model reads from Pyro's store
    store = pyro.get_param_store()
    assert all(any(p is store._params[n] for p in trainer.stepper.params)
               for n in ("W", "A", "noise"))
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]


@pytest.mark.parametrize("stepper", ["fast", "svi"])
@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_the_tutorial_vae_trains_with_every_estimator(tiny_images, name, stepper):
    _, binary = tiny_images
    vae = tutorial()
    before = [p.detach().clone() for p in vae.parameters()]
    trainer = Trainer(vae, build_estimator(name, 3), lr=1e-2, stepper=stepper)
    history = trainer.fit(binary, epochs=2, batch_size=10, test_x=binary[:10], progress=False)
    assert trainer.vae is vae
    assert all(math.isfinite(m["train_elbo"]) for m in history) and history[-1]["test_elbo"] < 0
    assert all(not torch.equal(old, new) for old, new in zip(before, vae.parameters()))


def test_warm_up_and_beta_act_on_a_users_pair(tiny_images):
    _, binary = tiny_images
    trainer = Trainer(tutorial(), beta=0.5, kl_warmup=2)
    history = trainer.fit(binary, epochs=3, batch_size=10, progress=False)
    assert [m["beta"] for m in history] == [0.0, 0.25, 0.5]


@pytest.mark.parametrize("which", ["tutorial", "pca"])
def test_fast_stepper_and_pyro_svi_train_a_users_pair_to_the_same_parameters(
        tiny_images, pca_data, which):
    params = {}
    for stepper in ("fast", "svi"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        if which == "tutorial":
            trainer, data = Trainer(tutorial().double(), lr=1e-2, stepper=stepper), \
                tiny_images[1].double()
        else:
            trainer, data = Trainer(model=pca_model, guide=pca_guide, lr=1e-2,
                                    stepper=stepper), pca_data
        pyro.set_rng_seed(1)
        trainer.fit(data, epochs=2, batch_size=10, progress=False)
        params[stepper] = {k: v.clone() for k, v in trainer.pair.state_dict().items()}
    assert params["fast"].keys() == params["svi"].keys()
    for key, fast in params["fast"].items():
        torch.testing.assert_close(fast, params["svi"][key], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("which", ["tutorial", "pca", "two_sites"])
def test_a_users_step_is_sync_free(tiny_images, pca_data, which):
    data = {"tutorial": tiny_images[1], "pca": pca_data, "two_sites": tiny_images[1]}[which]
    pair = {"tutorial": lambda: as_pair(tutorial()),
            "pca": lambda: as_pair(model=pca_model, guide=pca_guide),
            "two_sites": lambda: as_pair(TwoSiteVAE())}[which]().setup(data[:2])
    for name in ("trace", "analytic", "iwae_dreg"):
        stepper = FastStepper(pair, build_estimator(name, 2), lr=1e-3, clip_norm=1.0,
                              on_nan="skip")
        stepper.skip_on_host = False  # the device path a GPU takes
        with SyncGuard():
            for _ in range(2):
                stepper.step(data[:10])


def test_resume_of_a_lazy_pair_equals_an_uninterrupted_run(pca_data):
    def fresh():
        pyro.clear_param_store()
        return Trainer(model=pca_model, guide=pca_guide, lr=1e-2, estimator="iwae",
                       particles=3)

    pyro.set_rng_seed(0)
    straight = fresh()
    straight.fit(pca_data, epochs=4, batch_size=10, test_x=pca_data[:10], progress=False)
    pyro.set_rng_seed(0)
    first = fresh()
    first.fit(pca_data, epochs=2, batch_size=10, test_x=pca_data[:10], progress=False)
    state = first.state_dict()
    pyro.set_rng_seed(123)  # the restored state must win
    resumed = fresh()
    resumed.load_state_dict(state)  # before the parameters exist: waits for the first batch
    resumed.fit(pca_data, epochs=4, batch_size=10, test_x=pca_data[:10], progress=False)
    assert [m["test_elbo"] for m in resumed.history] == [m["test_elbo"] for m in
                                                         straight.history]
    for key, value in straight.pair.state_dict().items():
        assert torch.equal(value, resumed.pair.state_dict()[key]), key


def test_parameters_made_after_training_started_are_refused(pca_data):
    calls = {"n": 0}

    def late_model(x):
        pca_model(x)
        if calls["n"] > 1:
            pyro.param("late", torch.zeros(()))
        calls["n"] += 1

    trainer = Trainer(model=late_model, guide=pca_guide)
    with pytest.raises(RuntimeError, match="created parameters after training started"):
        trainer.fit(pca_data, epochs=1, batch_size=10, progress=False)  # found at epoch end
    with pytest.raises(RuntimeError, match="created parameters after training started"):
        trainer.prepare(pca_data[:10])  # and by a new setup


def test_bad_pairs_get_clear_errors():
    with pytest.raises(TypeError, match="has no model and guide methods"):
        Trainer(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="either a pair .* or model= and guide="):
        Trainer(tutorial(), model=pca_model, guide=pca_guide)
    with pytest.raises(TypeError, match="pass an object with model and guide methods, or "
                       "both model= and guide="):
        Trainer(model=pca_model)


# ---- exact answers: the linear-Gaussian pair of functions -----------------------------

def test_groups_of_a_pair_of_functions_are_guide_and_model(pca_data):
    groups = parameter_groups(pca_pair(pca_data))
    assert {k: len(v) for k, v in groups.items()} == {"guide": 3, "model": 3}
    assert set(parameter_groups(as_pair(tutorial()))) == {"encoder", "decoder"}


def test_kl_family_estimators_match_the_closed_form_elbo_and_its_gradient(pca_data):
    x = pca_data[:8]
    pair = pca_pair(x)
    exact = pca_exact(x)[1].sum()
    grads = exact_gradients(pair, exact)
    names = ("analytic", "trace", "tracegraph")
    draws = shared_draws(pair, x, names, DRAWS)
    elements = sum(g.numel() for g in grads.values())
    limit = student_t_quantile(1e-5 / (2 * elements * len(names)), DRAWS - 1)
    for name in names:
        values = draws.values[name]
        assert abs(values.mean() - exact) <= Z_LIMIT * values.std() / DRAWS ** 0.5, name
        for group, moments in draws.grads[name].items():
            z = (moments.mean - grads[group]) / (moments.se + 1e-9 * (1 + grads[group].abs()))
            assert z.abs().max() < limit, (name, group)


@pytest.mark.parametrize("name,particles,options", [
    ("iwae", 4, {}), ("renyi", 3, {"alpha": 0.5}), ("iwae_dreg", 3, {})])
def test_importance_weighted_estimators_equal_pyros_on_the_same_draws(pca_data, name,
                                                                      particles, options):
    x = pca_data[:6]
    pair = pca_pair(x)
    ours = build_estimator(name, particles, **options)
    theirs = ours.pyro_elbo()
    theirs.loss(pair.model, pair.guide, x)  # Pyro guesses its plate nesting by drawing
    ours.differentiable_loss(pair.model, pair.guide, x)
    params = list(pair.parameters())
    pyro.set_rng_seed(3)
    loss = ours.differentiable_loss(pair.model, pair.guide, x)
    grads = torch.autograd.grad(loss, params)
    pyro.set_rng_seed(3)
    expected = theirs.loss_and_grads(pair.model, pair.guide, x)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    if name != "iwae_dreg":  # DReG's gradient is its own; its value is IWAE's
        for mine, p in zip(grads, params):
            torch.testing.assert_close(mine, p.grad, rtol=1e-10, atol=1e-12)


def test_at_the_exact_posterior_every_bound_is_log_p_x(pca_data):
    x = pca_data[:8]
    pair = pca_pair(x)
    set_exact_posterior(x.shape[-1])
    log_px = float(pca_exact(x)[0].mean().detach())
    for name in ESTIMATORS.names():  # log p(x, z) - log q(z|x) = log p(x) for every z
        if name == "analytic":
            continue
        value = evaluate_elbo(pair, x, estimator=build_estimator(name, 3))
        assert value == pytest.approx(log_px, abs=1e-9), name
    # analytic samples only its reconstruction term: right in expectation
    values = torch.tensor([evaluate_elbo(pair, x, estimator="analytic") for _ in range(200)])
    assert abs(values.mean() - log_px) <= Z_LIMIT * values.std() / 200 ** 0.5


def test_importance_sampled_log_likelihood_agrees_with_the_exact_one(pca_data):
    x = pca_data[:16]
    pair = pca_pair(x)
    set_exact_posterior(x.shape[-1])
    store = pyro.get_param_store()
    with torch.no_grad():  # near the posterior, not at it, and wider (safe for IS)
        store["A"].add_(0.1 * torch.randn_like(store["A"]))
        store._params["q_scale"].add_(math.log(1.3))
    exact = pca_exact(x)[0].detach()
    assert (exact - pca_exact(x)[1].detach()).min() > 0.05  # not the exact posterior
    estimate = log_likelihood(pair, x, samples=2000, chunk=500)
    z = (estimate.per_datum - exact) / estimate.per_datum_mc_se
    assert z.abs().max() < student_t_quantile(1e-5 / (2 * len(x)), 1999)
    assert abs(estimate.mean - float(exact.mean())) <= Z_LIMIT * estimate.mc_se


def test_a_latent_outside_the_data_plate_is_named(pca_data):
    def model(x):
        pyro.sample("shift", dist.Normal(0.0, 1.0))
        pca_model(x)

    def guide(x):
        pyro.sample("shift", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))
        pca_guide(x)

    pair = PyroPair(model, guide).setup(pca_data[:2])
    with pytest.raises(ValueError, match="outside it: 'shift'"):
        log_likelihood(pair, pca_data[:4], samples=3)


# ---- diagnostics on users' pairs ------------------------------------------------------

def test_check_kl_reports_each_site_of_a_users_pair(pca_data, tiny_images):
    x = pca_data[:8].float()
    pair = PyroPair(pca_model, pca_guide).setup(x[:2])
    report = check_kl(pair, x, draws=100)
    assert report["agree"] and report["sites"]["code"]["kl"] == "closed form"
    assert next(pair.parameters()).dtype == torch.float32  # converted back
    assert torch.get_default_dtype() == torch.float32

    two = as_pair(TwoSiteVAE()).setup(tiny_images[1][:2])
    report = check_kl(two, tiny_images[1][:8], draws=100)
    sites = report["sites"]
    assert sites["style"]["kl"] == "closed form"
    assert sites["class"]["kl"].startswith("Monte Carlo (no closed form for "
                                           "RelaxedOneHotCategorical")
    assert sites["class"]["mean"] == pytest.approx(0.0, abs=1e-9)  # the same term, both ways
    assert report["agree"] and report["kl"].startswith("Monte Carlo (class: no closed form")


def test_compare_groups_a_users_parameters_by_its_pyro_module_names(tiny_images, pca_data):
    rows = compare_estimators(as_pair(tutorial()).setup(tiny_images[1][:2]),
                              tiny_images[1][:16], [EstimatorSpec("trace"),
                                                    EstimatorSpec("iwae", 5)], repeats=5)
    assert {"encoder_snr", "decoder_snr", "encoder_grad_var"} <= set(rows[0])
    rows = compare_estimators(pca_pair(pca_data), pca_data[:16], [EstimatorSpec("trace")],
                              repeats=5)
    assert {"guide_snr", "model_snr"} <= set(rows[0])
    table = format_table(rows)
    assert "guide_snr" in table and "model_grad_var" in table


def test_a_pair_with_a_condition_trains_on_tuples_of_tensors(pca_data):
    def model(x, y):
        shift = pyro.param("shift", torch.zeros(5, dtype=x.dtype))
        pca_model(x - y[:, None] * shift)

    def guide(x, y):
        pca_guide(x)

    y = torch.arange(len(pca_data), dtype=torch.float64) % 2
    trainer = Trainer(model=model, guide=guide, lr=1e-2)
    history = trainer.fit((pca_data, y), epochs=2, batch_size=10, test_x=(pca_data, y),
                          progress=False)
    assert math.isfinite(history[-1]["test_elbo"])
    assert "pyro.param:shift" in trainer.pair.state_dict()
    estimate = log_likelihood(trainer.pair, (pca_data[:4], y[:4]), samples=10)
    assert estimate.per_datum.shape == (4,)
    with pytest.raises(ValueError, match="every tensor needs the data along dim 0"):
        trainer.fit((pca_data, y[:3]), epochs=3, batch_size=10, progress=False)


def test_the_cuda_graph_check_reads_a_users_guide(tiny_images):
    """What ``compile="auto"`` decides on CUDA, checked here without one."""
    x = tiny_images[1][:4]
    cuda = torch.device("cuda")
    ok, reason = graph_capturable(as_pair(tutorial()).setup(x), build_estimator("trace"), x,
                                  cuda)
    assert ok, reason

    def model(x):
        with pyro.plate("data", len(x)):
            switch = pyro.sample("switch", dist.Bernoulli(0.5))
            pyro.sample("obs", dist.Normal(switch[:, None].expand(-1, 16), 1.0).to_event(1),
                        obs=x.reshape(len(x), -1))

    def guide(x):
        p = pyro.param("p", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", len(x)):
            pyro.sample("switch", dist.Bernoulli(p))

    discrete = PyroPair(model, guide).setup(x)
    ok, reason = graph_capturable(discrete, build_estimator("trace"), x, cuda)
    assert not ok and "guide site 'switch' is not reparameterised" in reason
    history = Trainer(discrete, lr=1e-2).fit(x, epochs=2, batch_size=4, progress=False)
    assert all(math.isfinite(m["train_elbo"]) for m in history)  # score-function gradient


# ---- found by review: the cases that broke ---------------------------------------------

def test_a_module_pair_with_a_pyro_param_resumes_exactly(tiny_images):
    x = tiny_images[0]

    def fresh():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        return Trainer(NoisyTutorialVAE(pixels=16, z_dim=2, hidden_dim=8), lr=1e-2)

    straight = fresh()
    straight.fit(x, epochs=4, batch_size=10, test_x=x[:10], progress=False)
    first = fresh()
    first.fit(x, epochs=2, batch_size=10, test_x=x[:10], progress=False)
    state = first.state_dict()
    assert "pyro.param:obs_scale" in state["model"]
    resumed = fresh()
    resumed.load_state_dict(state)  # before the first call made obs_scale
    resumed.fit(x, epochs=4, batch_size=10, test_x=x[:10], progress=False)
    assert [m["test_elbo"] for m in resumed.history] == [m["test_elbo"] for m in
                                                         straight.history]


def test_a_cleared_param_store_does_not_cut_a_pair_from_its_parameters(pca_data):
    pyro.set_rng_seed(0)
    a = Trainer(model=pca_model, guide=pca_guide, lr=1e-2)
    a.fit(pca_data, epochs=3, batch_size=10, progress=False)
    before = evaluate_elbo(a.pair, pca_data, estimator=build_estimator("trace", 50))
    Trainer(tutorial()).fit(torch.rand(20, 1, 4, 4), epochs=1, batch_size=10,
                            progress=False)  # clears Pyro's global store
    pyro.set_rng_seed(0)
    after = evaluate_elbo(a.pair, pca_data, estimator=build_estimator("trace", 50))
    assert after == pytest.approx(before, abs=0.5)  # the same parameters, new draws
    w = a.pair.state_dict()["pyro.param:W"].clone()
    a.fit(pca_data, epochs=4, batch_size=10, progress=False)
    assert not torch.equal(w, a.pair.state_dict()["pyro.param:W"])  # still trains them


def test_a_parameter_made_after_the_first_epoch_stops_training(pca_data):
    calls = {"n": 0}

    def guide(x):
        pca_guide(x)
        calls["n"] += 1
        if calls["n"] > 3:
            pyro.param("late_shift", torch.zeros(()))

    trainer = Trainer(model=pca_model, guide=guide)
    with pytest.raises(RuntimeError, match=r"created parameters after training started "
                       r"\(late_shift\)"):
        trainer.fit(pca_data, epochs=2, batch_size=10, progress=False)


def test_check_kl_gives_back_the_very_tensors_it_borrowed(tiny_images):
    x = tiny_images[1]
    trainer = Trainer(tutorial(), lr=1e-2)
    trainer.fit(x, epochs=1, batch_size=10, progress=False)
    params = list(trainer.pair.parameters())
    pointers = [p.data_ptr() for p in params]
    grads = [p.grad.clone() for p in params]
    check_kl(trainer.pair, x[:8], draws=20)
    assert [p.data_ptr() for p in params] == pointers  # an optimiser or a graph keeps them
    assert all(p.dtype == torch.float32 for p in params)
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))


def test_diagnostics_take_any_pair_as_given(tiny_images, pca_data):
    x = tiny_images[0][:8]
    root = RootPyroVAE()
    report = check_kl(root, x, draws=20)  # a PyroModule, parameters on its root
    assert report["agree"] and set(report["gradients"]) == {"guide", "model"}
    functions = SimpleNamespace(model=pca_model, guide=pca_guide)
    rows = compare_estimators(functions, pca_data[:8], [EstimatorSpec("trace")], repeats=3)
    assert {"guide_snr", "model_snr"} <= set(rows[0])


def test_samples_of_a_pair_with_a_condition(pca_data):
    def model(x, y):
        with pyro.plate("items", len(x)):
            z = pyro.sample("code", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("pixels", dist.Normal(z.sum(-1, keepdim=True) + y[:, None], 1.0)
                        .expand([len(x), 5]).to_event(1), obs=x)

    def guide(x, y):
        with pyro.plate("items", len(x)):
            pyro.sample("code", dist.Normal(x.new_zeros(2), 1.0).to_event(1))

    y = torch.arange(4, dtype=torch.float64) * 100
    samples = Generator(PyroPair(model, guide), (pca_data[:4], y)).sample(6)
    assert samples.shape == (6, 5)
    assert (samples[:, 0] - y[torch.arange(6) % 4]).abs().max() < 20  # the condition used
