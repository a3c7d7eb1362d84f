"""Polyak averaging of the weights: the average is the EMA recursion of the trained weights,
training is unchanged by it, it resumes exactly, and swapping it in is undone."""

import io

import pyro
import pytest
import torch
from reference import straight_and_resumed

from pyrovae.models.vae import VAE
from pyrovae.training.averaging import WeightAverage
from pyrovae.training.trainer import Trainer


def test_the_average_is_the_exponential_moving_average_of_the_sequence():
    torch.manual_seed(0)
    param = torch.zeros(3, 2)
    average = WeightAverage([param], decay=0.9)
    values = [torch.randn(3, 2) for _ in range(7)]
    expected = param.double().clone()
    for value in values:
        param.copy_(value)
        average.update()
        expected = 0.9 * expected + 0.1 * value.double()
    torch.testing.assert_close(average.averages[0].double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5, float("nan"), True, "0.9", None])
def test_a_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(ValueError, match="ema_decay must be a number in \\(0, 1\\)"):
        WeightAverage([torch.zeros(2)], decay)


def make_trainer(ema_decay=None, compile="none"):
    vae = VAE((1, 4, 4), z_dim=2, hidden=(8,))
    return Trainer(vae, "trace", lr=1e-2, ema_decay=ema_decay, compile=compile)


class RecordParams:
    """Wraps a stepper's ``step`` to keep a copy of the parameters after every step."""

    def __init__(self, trainer):
        self.after = []
        step, params = trainer.stepper.step, trainer.stepper.params

        def recorded(x):
            step(x)
            self.after.append([p.detach().double().clone() for p in params])

        trainer.stepper.step = recorded


@pytest.mark.parametrize("compile", ["none", "trace"])
def test_the_trainer_averages_every_step_and_trains_the_same_weights(tiny_images, compile):
    grey, _ = tiny_images
    pyro.set_rng_seed(0)
    plain = make_trainer()
    plain.fit(grey, epochs=2, batch_size=8, progress=False)
    pyro.set_rng_seed(0)
    averaged = make_trainer(0.8, compile)
    start = [p.detach().double().clone() for p in averaged.stepper.params]
    record = RecordParams(averaged)
    averaged.fit(grey, epochs=2, batch_size=8, progress=False)

    # same draws, same updates: the average changes nothing in training
    for a, b in zip(plain.vae.parameters(), averaged.vae.parameters()):
        assert torch.equal(a, b)
    expected = start
    for after in record.after:
        expected = [0.8 * e + 0.2 * p for e, p in zip(expected, after)]
    assert len(record.after) == 2 * (len(grey) // 8)
    for got, want in zip(averaged.average.averages, expected):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


def test_swapping_in_the_average_is_undone_also_after_an_error(tiny_images):
    grey, _ = tiny_images
    trainer = make_trainer(0.5)
    trainer.fit(grey, epochs=1, batch_size=8, progress=False)
    trained = [p.detach().clone() for p in trainer.stepper.params]
    assert not all(torch.equal(a, t) for a, t in zip(trainer.average.averages, trained))
    with pytest.raises(RuntimeError, match="inside"):
        with trainer.averaged():
            for p, a in zip(trainer.stepper.params, trainer.average.averages):
                assert torch.equal(p, a)
            raise RuntimeError("inside")
    for p, t in zip(trainer.stepper.params, trained):
        assert torch.equal(p, t)


def test_averaged_weights_give_their_own_test_elbo(tiny_images):
    grey, _ = tiny_images
    trainer = make_trainer(0.5)
    trainer.fit(grey, epochs=2, batch_size=8, progress=False)
    pyro.set_rng_seed(3)
    trained = trainer.evaluate(grey)
    with trainer.averaged():
        pyro.set_rng_seed(3)
        averaged = trainer.evaluate(grey)
    pyro.set_rng_seed(3)
    assert trainer.evaluate(grey) == trained != averaged


def test_a_resumed_run_continues_the_same_average(tiny_images):
    grey, _ = tiny_images
    pyro.set_rng_seed(0)
    straight = make_trainer(0.9)
    straight.fit(grey, epochs=3, batch_size=8, progress=False)

    pyro.set_rng_seed(0)
    first = make_trainer(0.9)
    first.fit(grey, epochs=1, batch_size=8, progress=False)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    pyro.set_rng_seed(99)
    resumed = make_trainer(0.9)
    resumed.load_state_dict(state)
    resumed.fit(grey, epochs=3, batch_size=8, progress=False)
    for a, b in zip(straight.average.averages, resumed.average.averages):
        assert torch.equal(a, b)

    with pytest.raises(ValueError, match="decay 0.9, this run asks for 0.5"):
        make_trainer(0.5).load_state_dict(state)
    without = make_trainer()
    without.fit(grey, epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="trained without --ema-decay"):
        make_trainer(0.9).load_state_dict(without.state_dict())


def test_a_trainer_without_an_average_says_so():
    with pytest.raises(ValueError, match="keeps no average"):
        make_trainer().averaged()
    with pytest.raises(ValueError, match="ema_decay must be"):
        make_trainer(1.0)


def test_a_run_with_ema_decay_resumes_exactly_and_is_evaluated_with_the_average(tmp_path):
    from pyrovae.runs.config import TrainConfig
    from pyrovae.runs.jobs import load_run

    config = TrainConfig(epochs=3, hidden=[16], batch_size=100, ema_decay=0.9)
    straight, resumed = straight_and_resumed(config, tmp_path, cut_at=1)
    for key in ("model", "averaged_model"):
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), (key, name)
    for a, b in zip(straight["ema"]["averages"], resumed["ema"]["averages"]):
        assert torch.equal(a, b)
    # the run's model is the averaged one, which differs from the trained weights
    vae, _ = load_run(tmp_path / "cut")
    loaded = vae.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in straight["averaged_model"].items())
    assert not all(torch.equal(straight["model"][k], v)
                   for k, v in straight["averaged_model"].items())
    assert (tmp_path / "cut" / "figures").is_dir()


def test_the_cli_refuses_a_bad_ema_decay(capsys):
    from pyrovae.runs.cli import main

    assert main(["train", "--ema-decay", "1.5", "--epochs", "1"]) == 2
    assert "ema_decay must be a number in (0, 1)" in capsys.readouterr().err
