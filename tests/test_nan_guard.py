"""The NaN guard: detected on the device, the run stops with the last good checkpoint kept,
or (``on_nan="skip"``) the bad updates are undone exactly."""

import json

import pytest
import torch

from pyrovae.inference.evaluation import evaluate_elbo
from pyrovae.inference.trace_elbo import TraceELBO
from pyrovae.models.vae import VAE
from pyrovae.runs.config import TrainConfig
from pyrovae.runs.jobs import load_run
from pyrovae.runs.train import train_run
from pyrovae.training.sync_guard import SyncGuard
from pyrovae.training.trainer import NonFiniteLossError, Trainer


@pytest.fixture
def poison(monkeypatch):
    """Make the loss NaN for the steps whose (0-based, run-wide) index is in ``bad``."""
    bad_steps = set()
    counter = {"step": 0}
    original = TraceELBO.differentiable_loss

    def loss(self, model, guide, *args, **kwargs):
        value = original(self, model, guide, *args, **kwargs)
        if torch.is_grad_enabled():  # training steps only, not evaluation
            step, counter["step"] = counter["step"], counter["step"] + 1
            if step in bad_steps:
                value = value * float("nan")
        return value

    monkeypatch.setattr(TraceELBO, "differentiable_loss", loss)
    return bad_steps


def test_stop_names_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, poison):
    config = TrainConfig(epochs=4, hidden=[16], batch_size=300)  # 4 steps per epoch
    poison.add(9)  # epoch 3, step 1; the update it makes turns steps 2 and 3 NaN too
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"epoch 3 at step 1 \(3 of 4 steps"):
        train_run(config, run, progress=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m.get("epoch") for m in lines] == [1, 2, 3]
    assert lines[-1] == {"event": "non_finite", "epoch": 3, "step": 1, "bad_steps": 3,
                         "steps": 4, "action": "stopped"}
    vae, _ = load_run(run)
    assert all(torch.isfinite(p).all() for p in vae.parameters())
    from pyrovae.components.data import load_dataset

    elbo = evaluate_elbo(vae, load_dataset("digits").test_x)
    assert elbo == pytest.approx(lines[1]["test_elbo"], abs=5)  # the epoch-2 model


# on_host: the CPU's way (the step is not taken); on the device: a GPU's way (undone with
# torch.where, no sync), run here on the CPU
SKIP_WAYS = pytest.mark.parametrize("on_host", [True, False], ids=["on_host", "on_device"])


@SKIP_WAYS
def test_skip_undoes_bad_updates_exactly(tiny_images, poison, on_host):
    grey, _ = tiny_images

    def trainer():
        torch.manual_seed(0)
        made = Trainer(VAE((1, 4, 4), z_dim=2, hidden=(8,)), lr=1e-2, on_nan="skip")
        made.stepper.skip_on_host = on_host
        return made

    poison.update({4, 5, 6, 7})  # every step of epoch 2
    skipping = trainer()
    torch.manual_seed(0)
    skipping.fit(grey, epochs=1, batch_size=10, progress=False)
    after_one = [p.detach().clone() for p in skipping.vae.parameters()]
    state_one = {k: v.clone() for k, v in skipping.stepper.optimizer.state_dict()["state"][0]
                 .items()}
    skipping.fit(grey, epochs=2, batch_size=10, progress=False)
    assert skipping.history[-1]["skipped_steps"] == 4
    for before, after in zip(after_one, skipping.vae.parameters()):
        assert torch.equal(before, after)
    for key, value in skipping.stepper.optimizer.state_dict()["state"][0].items():
        assert torch.equal(value, state_one[key]), key
    skipping.fit(grey, epochs=3, batch_size=10, progress=False)  # and training goes on
    assert "skipped_steps" not in skipping.history[-1]
    assert all(torch.isfinite(p).all() for p in skipping.vae.parameters())


@SKIP_WAYS
def test_skip_on_the_very_first_step_restores_adams_initial_state(tiny_images, poison,
                                                                   on_host):
    grey, _ = tiny_images
    poison.add(0)
    torch.manual_seed(0)
    vae = VAE((1, 4, 4), z_dim=2, hidden=(8,))
    initial = [p.detach().clone() for p in vae.parameters()]
    trainer = Trainer(vae, lr=1e-2, on_nan="skip")
    trainer.stepper.skip_on_host = on_host
    trainer.stepper.step(grey[:10])
    for before, after in zip(initial, vae.parameters()):
        assert torch.equal(before, after)
    state = trainer.stepper.optimizer.state_dict()["state"].get(0)
    if on_host:  # the step was not taken: Adam has no state yet
        assert state is None
    else:  # undone: Adam's initial state
        assert float(state["step"]) == 0 and not state["exp_avg"].any()
    trainer.stepper.step(grey[:10])  # a good step after it is Adam's first
    assert float(trainer.stepper.optimizer.state_dict()["state"][0]["step"]) == 1


def test_skip_on_the_device_is_sync_free(tiny_images, poison):
    grey, _ = tiny_images
    poison.add(1)
    trainer = Trainer(VAE((1, 4, 4), z_dim=2, hidden=(8,)), lr=1e-2, on_nan="skip")
    trainer.stepper.skip_on_host = False
    with SyncGuard():
        for _ in range(3):  # good, bad, good
            trainer.stepper.step(grey[:10])
    assert trainer.stepper.take_epoch().bad_steps == 1


def test_an_absurd_learning_rate_trips_the_guard(tiny_images):
    grey, _ = tiny_images
    torch.manual_seed(0)
    trainer = Trainer(VAE((1, 4, 4), z_dim=2, hidden=(8,), likelihood="gaussian"), lr=1e30)
    with pytest.raises(NonFiniteLossError, match="non-finite loss or gradient in epoch"):
        trainer.fit(grey, epochs=20, batch_size=10, progress=False)
    assert len(trainer.history) < 20


def test_svi_stepper_stops_but_cannot_skip(tiny_images, poison):
    grey, _ = tiny_images
    with pytest.raises(ValueError, match="on_nan='skip' needs stepper 'fast'"):
        Trainer(VAE((1, 4, 4), z_dim=2, hidden=(8,)), stepper="svi", on_nan="skip")
