"""The score-function switch and the KL weight (beta, warm-up) as effect handlers, and every
registered estimator training the model through the Trainer, the CLI and both steppers."""

import json

import pyro
import pyro.poutine as poutine
import pytest
import torch

from pyrovae.inference.estimators import ESTIMATORS, build_estimator
from pyrovae.inference.evaluation import evaluate_elbo
from pyrovae.inference.handlers import ScoreFunctionMessenger
from pyrovae.models.vae import VAE
from pyrovae.runs.cli import main
from pyrovae.runs.config import TrainConfig
from pyrovae.training.trainer import Trainer

SHAPE = (1, 4, 4)


def tiny_vae(likelihood: str = "bernoulli") -> VAE:
    return VAE(SHAPE, z_dim=2, hidden=(8,), likelihood=likelihood)


def test_score_function_switch_keeps_the_draw_and_cuts_its_path(tiny_images):
    """Same seed, same z; the switched draw has no gradient and a score-function term."""
    _, binary = tiny_images
    vae = tiny_vae()
    traces = []
    for handler in (lambda g: g, lambda g: ScoreFunctionMessenger()(g)):
        pyro.set_rng_seed(1)
        trace = poutine.trace(handler(vae.guide)).get_trace(binary[:5])
        trace.compute_score_parts()
        traces.append(trace.nodes["z"])
    pathwise, score = traces
    torch.testing.assert_close(pathwise["value"], score["value"])
    assert pathwise["value"].requires_grad and not score["value"].requires_grad
    assert not score["fn"].has_rsample
    torch.testing.assert_close(score["score_parts"].score_function, pathwise["log_prob"])


@pytest.mark.parametrize("name", ["trace", "tracegraph", "analytic"])
def test_the_kl_weight_scales_only_the_latent_terms(tiny_images, name):
    """On one draw, loss(beta) = -E[log P(X|z)] + beta * KL is affine in beta: the weight
    reaches the KL (sampled or closed form) and leaves the reconstruction alone."""
    _, binary = tiny_images
    vae = tiny_vae()
    losses = []
    for beta in (0.0, 0.5, 1.0, 3.0):
        estimator = build_estimator(name)
        estimator.set_kl_weight(beta)
        pyro.set_rng_seed(2)
        losses.append(estimator.differentiable_loss(vae.model, vae.guide, binary[:6]).item())
    recon, kl = losses[0], losses[2] - losses[0]
    assert kl > 0
    for beta, loss in zip((0.0, 0.5, 1.0, 3.0), losses):
        assert loss == pytest.approx(recon + beta * kl, rel=1e-5)


def test_kl_warmup_schedule_metrics_and_unweighted_evaluation(tiny_images):
    """beta_e = B min(1, (e - 1) / N); the svi stepper applies it exactly as the fast one;
    test_elbo is the unweighted bound."""
    _, binary = tiny_images
    trained = {}
    for stepper in ("fast", "svi"):
        pyro.set_rng_seed(0)
        vae = tiny_vae()
        trainer = Trainer(vae, "trace", lr=1e-2, stepper=stepper, beta=2.0, kl_warmup=4)
        history = trainer.fit(binary, epochs=6, batch_size=10, test_x=binary[:20],
                              progress=False)
        assert [m["beta"] for m in history] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
        trained[stepper] = [p.detach().clone() for p in vae.parameters()]
        with torch.random.fork_rng():
            expected = evaluate_elbo(vae, binary[:20], 10, "trace")  # as fit: batches of 10
        assert history[-1]["test_elbo"] == pytest.approx(expected, rel=1e-6)
    for fast, svi in zip(trained["fast"], trained["svi"]):
        torch.testing.assert_close(fast, svi, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    ({"beta": 0.0}, "beta must be a finite number > 0, got 0.0"),
    ({"kl_warmup": -1}, "kl_warmup must be an integer >= 0"),
    ({"estimator": build_estimator("trace", score_function=True), "beta": 0.5},
     "drop --score-function")])
def test_bad_kl_weights_are_refused(kwargs, match):
    kwargs = {"estimator": "trace", **kwargs}
    with pytest.raises(ValueError, match=match):
        Trainer(tiny_vae(), **kwargs)


@pytest.mark.parametrize("name", ["analytic", "iwae_dreg"])
def test_estimators_that_need_the_path_refuse_the_score_function(name):
    with pytest.raises(ValueError, match=f"not available with estimator '{name}'"):
        build_estimator(name, score_function=True)


@pytest.mark.parametrize("stepper", ["fast", "svi"])
@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_every_estimator_trains_the_model_a_few_steps(tiny_images, name, stepper):
    """Each registered estimator, K = 3, through the Trainer: finite objective, every
    parameter moved, a test bound reported. Fails for any estimator that cannot train."""
    _, binary = tiny_images
    vae = tiny_vae()
    before = [p.detach().clone() for p in vae.parameters()]
    history = Trainer(vae, build_estimator(name, 3), lr=1e-2, stepper=stepper).fit(
        binary, epochs=2, batch_size=10, test_x=binary[:10], progress=False)
    assert all(torch.isfinite(torch.tensor(m["train_elbo"])) for m in history)
    assert history[-1]["test_elbo"] < 0
    for old, new in zip(before, vae.parameters()):
        assert not torch.equal(old, new)


@pytest.mark.parametrize("name,particles", [("iwae", 4), ("renyi", 3), ("tracegraph", 2)])
def test_fast_and_svi_steppers_train_the_same_tensors(tiny_images, name, particles):
    """The sync-free losses against Pyro's RenyiELBO / TraceGraph_ELBO through SVI."""
    _, binary = tiny_images
    params = {}
    for stepper in ("fast", "svi"):
        pyro.set_rng_seed(0)
        vae = tiny_vae()
        pyro.set_rng_seed(1)
        Trainer(vae, build_estimator(name, particles), lr=1e-2, stepper=stepper,
                clip_norm=5.0).fit(binary, epochs=2, batch_size=10, progress=False)
        params[stepper] = [p.detach().clone() for p in vae.parameters()]
    for fast, svi in zip(params["fast"], params["svi"]):
        torch.testing.assert_close(fast, svi, rtol=1e-4, atol=1e-5)


def test_cli_trains_with_the_new_flags_and_refuses_bad_ones(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--elbo", "renyi", "--alpha", "0.3", "--particles", "3", "--beta",
                 "0.5", "--kl-warmup", "1", "--epochs", "2", "--hidden", "16", "--out",
                 str(out), "--quiet"])
    assert code == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["beta"] for m in metrics] == [0.0, 0.5]
    assert json.loads((out / "config.json").read_text())["alpha"] == 0.3
    for flags, message in ((["--elbo", "renyi", "--alpha", "1"], "alpha must be a finite "
                            "number other than 1"),
                           (["--elbo", "analytic", "--score-function"], "score_function=True "
                            "is not available with estimator 'analytic'"),
                           (["--score-function", "--kl-warmup", "3"], "drop --score-function")):
        capsys.readouterr()
        assert main(["train", *flags, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()


def test_config_round_trip_keeps_the_estimator_fields():
    config = TrainConfig(elbo="iwae", particles=5, score_function=True).validate()
    again = TrainConfig.from_dict(config.to_dict())
    assert again.build_estimator().axes == config.build_estimator().axes
    assert again.build_estimator().axes.gradient == "score function"


def test_a_score_function_estimator_is_kept_out_of_cuda_graphs(tiny_images):
    """The capture check looks at the guide as the estimator runs it (through its handlers)."""
    from pyrovae.training.steppers import graph_capturable

    vae, x = tiny_vae(), tiny_images[1][:4]
    cuda = torch.device("cuda")  # only its type is read before the guide is traced
    ok, reason = graph_capturable(vae, build_estimator("iwae", 3, score_function=True), x, cuda)
    assert not ok and "not reparameterised" in reason
    assert graph_capturable(vae, build_estimator("iwae_dreg", 3), x, cuda)[0]
