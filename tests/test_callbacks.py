"""The loop's side effects are callbacks: the Trainer alone writes no file and calls each
callback with host values, in order, also when training stops on a non-finite loss."""

import math
import os

import pytest
import torch

from pyrovae.models.vae import VAE
from pyrovae.training.callbacks import Callback, StopOnSigint
from pyrovae.training.trainer import NonFiniteLossError, Trainer


class Recorder(Callback):
    """Records every hook call: (hook, epoch, payload)."""

    def __init__(self, stop_after: int | None = None):
        self.calls, self.stop_after = [], stop_after

    def on_fit_start(self, trainer, epochs):
        self.calls.append(("start", trainer.epoch, epochs))

    def on_epoch_end(self, trainer, metrics):
        self.calls.append(("epoch", trainer.epoch, dict(metrics)))
        if self.stop_after is not None and trainer.epoch >= self.stop_after:
            trainer.stop_requested = True

    def on_exception(self, trainer, error):
        self.calls.append(("exception", trainer.epoch, error))

    def on_fit_end(self, trainer):
        self.calls.append(("end", trainer.epoch, None))


def make_trainer(**options):
    return Trainer(VAE((1, 4, 4), z_dim=2, hidden=(8,)), "trace", lr=1e-2, **options)


def test_the_trainer_writes_no_file_and_calls_back_with_host_values(tiny_images, tmp_path,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    grey, _ = tiny_images
    first, second = Recorder(), Recorder()
    trainer = make_trainer()
    history = trainer.fit(grey, epochs=3, batch_size=8, test_x=grey[:10],
                          callbacks=[first, second], progress=False)
    assert list(tmp_path.iterdir()) == []
    assert first.calls == second.calls
    kinds = [call[0] for call in first.calls]
    assert kinds == ["start", "epoch", "epoch", "epoch", "end"]
    assert first.calls[0] == ("start", 0, 3)
    for (_, epoch, metrics), recorded in zip(first.calls[1:4], history):
        assert metrics == recorded and metrics["epoch"] == epoch
        assert all(isinstance(v, (int, float)) and not torch.is_tensor(v)
                   for v in metrics.values())
        assert math.isfinite(metrics["train_elbo"]) and math.isfinite(metrics["test_elbo"])


def test_a_callback_can_stop_training_after_an_epoch(tiny_images):
    grey, _ = tiny_images
    recorder = Recorder(stop_after=2)
    trainer = make_trainer()
    trainer.fit(grey, epochs=5, batch_size=8, callbacks=[recorder], progress=False)
    assert trainer.epoch == 2 and recorder.calls[-1] == ("end", 2, None)


def test_a_non_finite_epoch_reaches_on_exception_not_on_epoch_end(tiny_images):
    grey, _ = tiny_images
    recorder = Recorder()
    trainer = make_trainer()
    trainer.fit(grey, epochs=1, batch_size=8, callbacks=[recorder], progress=False)
    with torch.no_grad():
        next(trainer.vae.decoder.parameters()).fill_(math.nan)
    with pytest.raises(NonFiniteLossError):
        trainer.fit(grey, epochs=2, batch_size=8, callbacks=[recorder], progress=False)
    kinds = [call[0] for call in recorder.calls]
    assert kinds == ["start", "epoch", "end", "start", "exception", "end"]
    assert isinstance(recorder.calls[4][2], NonFiniteLossError) and trainer.epoch == 1


def test_stop_on_sigint_restores_the_previous_handler(tiny_images):
    import signal

    grey, _ = tiny_images
    before = signal.getsignal(signal.SIGINT)
    seen = []

    class Peek(Callback):
        def on_epoch_end(self, trainer, metrics):
            seen.append(signal.getsignal(signal.SIGINT))
            os.kill(os.getpid(), signal.SIGINT)  # a first Ctrl-C: stop after this epoch

    trainer = make_trainer()
    trainer.fit(grey, epochs=4, batch_size=8, callbacks=[StopOnSigint(), Peek()],
                progress=False)
    assert trainer.epoch == 1 and trainer.stop_requested
    assert seen[0] is not before and signal.getsignal(signal.SIGINT) is before
