"""The traced step (``compile="trace"``): the recorded program gives the eager step's loss and
gradients bit for bit on the same generator state, for every estimator and component; it
falls back to eager steps, with its reason, where the program changes; oneDNN's products
agree with the default within float32 rounding."""

import logging

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae.components.guides import GUIDES
from pyrovae.components.likelihoods import LIKELIHOODS
from pyrovae.components.priors import PRIORS
from pyrovae.inference.estimators import ESTIMATORS, build_estimator
from pyrovae.models.vae import VAE
from pyrovae.training import gemm
from pyrovae.training.traced import TracedStep
from pyrovae.training.trainer import Trainer

SHAPE = (1, 4, 4)


def batch(n=8, seed=3):
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) * 0.9 + 0.05


def make_vae(seed=0, **options):
    pyro.clear_param_store()
    torch.manual_seed(seed)
    options = {"z_dim": 2, "hidden": (8,), **options}
    z_dim, hidden = options.pop("z_dim"), options.pop("hidden")
    return VAE(SHAPE, z_dim, hidden, **options)


def loss_fn(vae, estimator):
    def loss(*args):
        with pyro.validation_enabled(False):
            return estimator.differentiable_loss(vae.model, vae.guide, *args)
    return loss


def eager_loss_and_grads(vae, estimator, x):
    params = list(vae.parameters())
    for p in params:
        p.grad = None
    loss = loss_fn(vae, estimator)(x)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in params]


def traced_loss_and_grads(step, vae, x):
    params = list(vae.parameters())
    for p in params:  # as the stepper's zero_grad(set_to_none=True)
        p.grad = None
    loss = step(x)
    return loss, [p.grad.clone() for p in params]


def replaying(vae, estimator, x, gemm_choice="default"):
    """A TracedStep past its two recordings."""
    step = TracedStep(loss_fn(vae, estimator), list(vae.parameters()), gemm_choice)
    for _ in range(2):
        step(x)
    assert step.program is not None, step.status
    return step


def assert_same_as_eager(vae, estimator, x, step, exact=True):
    state = torch.get_rng_state()
    loss, grads = eager_loss_and_grads(vae, estimator, x)
    torch.set_rng_state(state)
    t_loss, t_grads = traced_loss_and_grads(step, vae, x)
    if exact:
        assert torch.equal(loss, t_loss)
        for g, t in zip(grads, t_grads):
            assert torch.equal(g, t)
    else:
        torch.testing.assert_close(t_loss, loss, rtol=1e-5, atol=1e-4)
        for g, t in zip(grads, t_grads):
            torch.testing.assert_close(t, g, rtol=1e-4, atol=1e-4)
    assert not torch.equal(torch.get_rng_state(), state)  # the replay drew fresh noise


@pytest.mark.parametrize("name", ESTIMATORS.names())
@pytest.mark.parametrize("score_function", [False, True])
def test_replay_equals_the_eager_step_bit_for_bit_for_every_estimator(name, score_function):
    if score_function and name in ("analytic", "iwae_dreg"):
        pytest.skip(f"{name} needs pathwise gradients")
    vae = make_vae()
    estimator = build_estimator(name, 3 if name in ("iwae", "iwae_dreg", "renyi") else 1,
                                score_function=score_function)
    x = batch()
    step = replaying(vae, estimator, x)
    assert_same_as_eager(vae, estimator, x, step)


@pytest.mark.parametrize("component,name", [("prior", n) for n in PRIORS.names()] +
                         [("likelihood", n) for n in LIKELIHOODS.names()] +
                         [("guide", n) for n in GUIDES.names()])
def test_replay_equals_the_eager_step_for_every_registered_component(component, name):
    if name == "conditional_normal":
        pytest.skip("a prior P(z|X) of the cvae")
    options = {component: name}
    if component == "likelihood" and name == "bernoulli":
        x = torch.bernoulli(batch())
    else:
        x = batch()
    vae = make_vae(**options)
    estimator = build_estimator("trace", 1)
    step = replaying(vae, estimator, x)
    assert_same_as_eager(vae, estimator, x, step)


def test_onednn_products_agree_with_the_default_within_float32_rounding():
    if not gemm.onednn_available():
        pytest.skip("this torch has no oneDNN linear")
    vae = make_vae(hidden=(64, 32))
    estimator = build_estimator("trace", 1)
    x = batch(n=32)
    step = replaying(vae, estimator, x, gemm_choice="onednn")
    assert "oneDNN" in step.status
    assert_same_as_eager(vae, estimator, x, step, exact=False)
    a, b, bias = torch.randn(33, 70), torch.randn(70, 17), torch.randn(17)
    torch.testing.assert_close(gemm.onednn_mm(a, b), a @ b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gemm.onednn_addmm(bias, a.t().contiguous().t(), b),
                               torch.addmm(bias, a, b), rtol=1e-5, atol=1e-5)
    d = torch.randn(33, 5)  # a transposed view, as the backward pass's products take
    torch.testing.assert_close(gemm.onednn_mm(a.t(), d), a.t() @ d, rtol=1e-5, atol=1e-5)


def test_measuring_the_products_leaves_the_training_stream_alone():
    vae = make_vae(hidden=(16,))
    step = TracedStep(loss_fn(vae, build_estimator("trace", 1)), list(vae.parameters()),
                      "measure")
    x = batch()
    step(x)  # the first recording
    state = torch.get_rng_state()
    module = step.first
    choice = gemm.choose_gemm(module.graph)
    assert torch.equal(torch.get_rng_state(), state)
    assert choice.default_ms > 0 and "matrix products" in choice.describe()


def test_the_kl_weight_changed_in_place_reaches_the_replay():
    vae = make_vae()
    estimator = build_estimator("analytic", 1)
    estimator.set_kl_weight(0.0)
    x = batch()
    step = replaying(vae, estimator, x)
    estimator.set_kl_weight(0.7)  # as the warm-up does at an epoch's start
    assert_same_as_eager(vae, estimator, x, step)


class BranchingVAE(VAE):
    """Decides on the data, on the host: its program may change from batch to batch."""

    def model(self, x):
        if x.sum() > 0:  # a host read
            return super().model(x)
        return super().model(x)


class SometimesVAE(VAE):
    """An extra site on every second call: two recordings differ."""

    calls = 0

    def model(self, x):
        type(self).calls += 1
        if type(self).calls % 2:
            pyro.sample("extra", dist.Normal(0.0, 1.0))
        return super().model(x)

    def guide(self, x):
        if type(self).calls % 2 == 0:  # the guide runs first: the model's next call is odd
            pyro.sample("extra", dist.Normal(0.0, 1.0))
        return super().guide(x)


@pytest.mark.parametrize("cls,reason", [
    (BranchingVAE, "reads tensor values on the host"),
    (SometimesVAE, "different programs"),
])
def test_a_program_that_changes_falls_back_to_eager_with_its_reason(cls, reason, caplog):
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = cls(SHAPE, 2, (8,))
    estimator = build_estimator("trace", 1)
    x = batch()
    step = TracedStep(loss_fn(vae, estimator), list(vae.parameters()), "default")
    with caplog.at_level(logging.WARNING, logger="pyrovae.training.traced"):
        for _ in range(4):
            step(x)
    assert step.program is None and reason in step.failed
    assert reason in caplog.text
    if cls is BranchingVAE:  # still the right step: eager
        assert_same_as_eager(vae, estimator, x, step)


def test_a_batch_of_another_shape_or_mode_is_recorded_again_and_is_right(caplog):
    vae = make_vae()
    estimator = build_estimator("trace", 1)
    step = replaying(vae, estimator, batch())
    with caplog.at_level(logging.INFO, logger="pyrovae.training.traced"):
        assert_same_as_eager(vae, estimator, batch(n=5), step)
    assert step.program is None and step.first is not None  # recording for the new shape
    assert "recording again" in caplog.text
    step(batch(n=5))
    assert step.program is not None
    assert_same_as_eager(vae, estimator, batch(n=5), step)


def test_freezing_parameters_or_eval_mode_records_the_step_again(tiny_images):
    grey, _ = tiny_images
    finals = []
    for compile in ("none", "trace"):
        vae = make_vae(seed=1)
        trainer = Trainer(vae, "trace", lr=1e-2, compile=compile)
        torch.manual_seed(2)
        trainer.fit(grey, epochs=2, batch_size=8, progress=False)
        for p in vae.encoder.parameters():  # freeze the encoder
            p.requires_grad_(False)
        frozen = [p.clone() for p in vae.encoder.parameters()]
        trainer.fit(grey, epochs=4, batch_size=8, progress=False)
        assert all(torch.equal(a, b) for a, b in zip(frozen, vae.encoder.parameters()))
        if compile == "trace":  # recorded again, for the decoder alone
            assert "replaying" in trainer.stepper.traced.status, trainer.stepper.traced.status
        finals.append([p.detach().clone() for p in vae.parameters()])
    for eager, traced in zip(*finals):
        assert torch.equal(eager, traced)


class TemperedVAE(VAE):
    """A Python attribute the recording bakes in as a constant."""

    temperature = 1.0

    def model(self, x):
        with pyro.poutine.scale(scale=self.temperature):
            return super().model(x)


def test_python_state_changed_between_fits_is_caught_and_recorded_again(tiny_images,
                                                                        caplog):
    grey, _ = tiny_images
    histories = []
    for compile in ("none", "trace"):
        pyro.clear_param_store()
        torch.manual_seed(1)
        vae = TemperedVAE(SHAPE, 2, (8,))
        trainer = Trainer(vae, "trace", lr=1e-2, compile=compile)
        torch.manual_seed(2)
        trainer.fit(grey, epochs=2, batch_size=8, progress=False)
        vae.temperature = 0.1
        with caplog.at_level(logging.WARNING, logger="pyrovae.training.traced"):
            trainer.fit(grey, epochs=4, batch_size=8, progress=False)
        histories.append([m["train_elbo"] for m in trainer.history])
    assert histories[0] == histories[1]
    assert "no longer gives the eager step's numbers" in caplog.text


def test_an_unchanged_model_passes_the_check_at_each_fit(tiny_images, caplog):
    grey, _ = tiny_images
    trainer = Trainer(make_vae(), "trace", compile="trace")
    with caplog.at_level(logging.WARNING, logger="pyrovae.training.traced"):
        for epochs in (1, 2, 3):
            trainer.fit(grey, epochs=epochs, batch_size=8, progress=False)
    assert "replaying" in trainer.stepper.traced.status and not caplog.text


def test_gradients_that_share_storage_are_handed_out_apart():
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    b = torch.nn.Parameter(torch.tensor([0.5, -1.0]))

    def loss(x):
        return ((a + b) * x).sum()  # the gradient of a and of b: one tensor in the program

    step = TracedStep(loss, [a, b], "default")
    x = torch.tensor([3.0, 4.0])
    for _ in range(3):
        a.grad = b.grad = None
        step(x)
    assert step.program is not None
    assert a.grad.untyped_storage().data_ptr() != b.grad.untyped_storage().data_ptr()
    a.grad.mul_(0.5)  # as clipping does, in place
    assert torch.equal(b.grad, x)


@pytest.mark.parametrize("estimator", ["trace", "iwae"])
def test_training_with_the_traced_step_equals_eager_training(tiny_images, estimator):
    grey, _ = tiny_images
    finals = []
    for compile in ("none", "trace"):
        vae = make_vae(seed=1)
        trainer = Trainer(vae, estimator, particles=3 if estimator == "iwae" else 1,
                          lr=1e-2, compile=compile, gemm="default")
        torch.manual_seed(2)
        trainer.fit(grey, epochs=3, batch_size=8, progress=False)
        finals.append([p.detach().clone() for p in vae.parameters()])
        if compile == "trace":
            assert "replaying" in trainer.stepper.traced.status
    for eager, traced in zip(*finals):
        assert torch.equal(eager, traced)


def test_trace_needs_the_cpu_fast_stepper(tiny_images):
    vae = make_vae()
    with pytest.raises(ValueError, match="compile='trace' needs stepper='fast'"):
        Trainer(vae, "trace", compile="trace", stepper="svi")


@pytest.mark.parametrize("which", ["tutorial", "pca", "two_sites"])
def test_a_users_own_pair_traced_trains_as_eagerly(tiny_images, which):
    from tests.user_models import TutorialVAE, TwoSiteVAE, pca_guide, pca_model

    data = torch.randn(40, 5, generator=torch.Generator().manual_seed(2)) if which == "pca" \
        else tiny_images[1]
    finals = {}
    for compile in ("none", "trace"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        if which == "pca":
            trainer = Trainer(model=pca_model, guide=pca_guide, lr=1e-2, compile=compile,
                              gemm="default")
        else:
            pair = TutorialVAE(pixels=16, z_dim=2, hidden_dim=8) if which == "tutorial" \
                else TwoSiteVAE()
            trainer = Trainer(pair, lr=1e-2, compile=compile, gemm="default")
        pyro.set_rng_seed(1)
        trainer.fit(data, epochs=2, batch_size=10, progress=False)
        if compile == "trace":
            assert "replaying" in trainer.stepper.traced.status, trainer.stepper.traced.status
        finals[compile] = {k: v.clone() for k, v in trainer.pair.state_dict().items()}
    for key, eager in finals["none"].items():
        assert torch.equal(eager, finals["trace"][key]), key


@pytest.mark.parametrize("gemm_choice", ["default", "measure", "onednn"])
def test_a_resumed_traced_run_equals_an_uninterrupted_one(tiny_images, gemm_choice):
    if gemm_choice == "onednn" and not gemm.onednn_available():
        pytest.skip("this torch has no oneDNN linear")
    grey, _ = tiny_images

    def trainer():
        return Trainer(make_vae(seed=1), "iwae", particles=2, lr=1e-2, compile="trace",
                       gemm=gemm_choice)

    straight = trainer()
    torch.manual_seed(2)
    straight.fit(grey, epochs=4, batch_size=8, progress=False)
    cut = trainer()
    torch.manual_seed(2)
    cut.fit(grey, epochs=2, batch_size=8, progress=False)
    state = cut.state_dict()
    assert state["gemm"] in ("default", "onednn")
    resumed = trainer()
    resumed.load_state_dict(state)
    resumed.fit(grey, epochs=4, batch_size=8, progress=False)
    assert resumed.gemm == state["gemm"]
    assert [m["train_elbo"] for m in resumed.history] == \
        [m["train_elbo"] for m in straight.history]
    for a, b in zip(straight.pair.parameters(), resumed.pair.parameters()):
        assert torch.equal(a, b)


def test_inductor_trains_within_float32_rounding_of_eager(tiny_images):
    grey, _ = tiny_images
    finals, status = [], None
    for compile in ("none", "inductor"):
        vae = make_vae(seed=1)
        trainer = Trainer(vae, "trace", lr=1e-2, compile=compile, gemm="default")
        torch.manual_seed(2)
        trainer.fit(grey, epochs=2, batch_size=8, progress=False)
        finals.append([p.detach().clone() for p in vae.parameters()])
        status = getattr(trainer.stepper.traced, "status", None)
    assert "compiled by inductor" in status or "inductor failed" in status, status
    for eager, compiled in zip(*finals):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_inductor_compiles_onednns_products_and_trains_as_torchs(tiny_images):
    """oneDNN's linear is a custom operator to inductor: compiled as it is (inductor lowers
    ``mkldnn._linear_pointwise`` itself only for constant weights, and failed on ours)."""
    if not gemm.onednn_available():
        pytest.skip("this torch has no oneDNN linear")
    grey, _ = tiny_images
    finals, statuses = [], []
    for choice in ("default", "onednn"):
        vae = make_vae(seed=1)
        trainer = Trainer(vae, "trace", lr=1e-2, compile="inductor", gemm=choice)
        torch.manual_seed(2)
        trainer.fit(grey, epochs=2, batch_size=8, progress=False)
        finals.append([p.detach().clone() for p in vae.parameters()])
        statuses.append(trainer.stepper.traced.status)
    if "inductor failed" in statuses[0]:
        pytest.skip(f"inductor cannot compile on this machine: {statuses[0]}")
    assert "matrix products: oneDNN" in statuses[1], statuses[1]
    assert "compiled by inductor" in statuses[1] and "failed" not in statuses[1], statuses[1]
    for default, onednn in zip(*finals):
        torch.testing.assert_close(onednn, default, rtol=1e-4, atol=1e-5)


def test_a_failed_inductor_compile_keeps_replaying_the_recording(monkeypatch, caplog):
    def broken(module, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    vae = make_vae()
    estimator = build_estimator("trace", 1)
    x = batch()
    step = TracedStep(loss_fn(vae, estimator), list(vae.parameters()), "default", "inductor")
    with caplog.at_level(logging.WARNING, logger="pyrovae.training.traced"):
        for _ in range(4):
            step(x)
    assert "inductor failed (RuntimeError: no C++ compiler)" in step.status
    assert "no C++ compiler" in caplog.text
    assert_same_as_eager(vae, estimator, x, step)  # bit for bit: the plain replay


def test_auto_traces_a_long_cpu_run_and_not_a_short_one(tiny_images, caplog):
    grey, _ = tiny_images
    with caplog.at_level(logging.INFO, logger="pyrovae.training.step_mode"):
        short = Trainer(make_vae(), "trace", compile="auto")
        short.fit(grey, epochs=2, batch_size=8, progress=False)  # 10 steps
        long = Trainer(make_vae(), "trace", compile="auto", gemm="default")
        long.fit(grey, epochs=100, batch_size=8, progress=False)  # 500 steps
    assert short.stepper.traced is None
    assert "replaying" in long.stepper.traced.status
    assert "traced training: 500 steps on the CPU" in caplog.text
