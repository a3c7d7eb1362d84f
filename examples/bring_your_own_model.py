"""Bring your own Pyro model: Pyro's tutorial VAE, unchanged, trained and checked by pyrovae.

    python examples/bring_your_own_model.py [--dataset digits|mnist] [--data-dir DIR]
        [--epochs 30] [--out byo]

Two models written as a Pyro user writes them, with nothing from pyrovae inside:

1. ``TutorialVAE``: the model of Pyro's ``examples/vae/vae.py`` (plain ``nn.Module``
   encoder and decoder registered with ``pyro.module``, sites ``latent`` and ``obs``);
2. ``ClassStyleVAE``: two latent sites, a relaxed one-hot class and a Gaussian style.

For each, pyrovae's ``Trainer`` trains it with the sync-free fast step (two lines instead of
``SVI(...).step``), then reports the test ELBO, the importance-sampled log P(X) with its
standard errors, ``check_kl`` (closed-form KL against Pyro's Monte-Carlo ELBO, site by site)
and ``compare_estimators`` (gradient SNR of encoder and decoder). Samples and
reconstructions are read from the model's own ``obs`` site. Writes ``OUT/<model>.png``.
About a minute on 2 CPU cores with the defaults (digits).
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from pyrovae import (  # noqa: E402
    EstimatorSpec,
    Generator,
    Trainer,
    check_kl,
    compare_estimators,
    evaluate_elbo,
    load_dataset,
    log_likelihood,
)
from pyrovae.inference.check_kl import format_report  # noqa: E402
from pyrovae.inference.compare import format_table  # noqa: E402
from pyrovae.runs.plots import image_grid  # noqa: E402

# ---- 1. Pyro's tutorial VAE, as in pyro/examples/vae/vae.py (784 pixels made a parameter)

class Encoder(nn.Module):
    def __init__(self, z_dim, hidden_dim, pixels=784):
        super().__init__()
        self.pixels = pixels
        self.fc1 = nn.Linear(pixels, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        x = x.reshape(-1, self.pixels)
        hidden = self.softplus(self.fc1(x))
        z_loc = self.fc21(hidden)
        z_scale = torch.exp(self.fc22(hidden))
        return z_loc, z_scale


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim, pixels=784):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, pixels)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        hidden = self.softplus(self.fc1(z))
        loc_img = self.sigmoid(self.fc21(hidden))
        return loc_img


class TutorialVAE(nn.Module):
    def __init__(self, z_dim=50, hidden_dim=400, pixels=784):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim, pixels)
        self.decoder = Decoder(z_dim, hidden_dim, pixels)
        self.z_dim, self.pixels = z_dim, pixels

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                        obs=x.reshape(-1, self.pixels))
            return loc_img

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


# ---- 2. two latent sites: a class (relaxed one-hot) and a style --------------------------

class ClassStyleVAE(nn.Module):
    def __init__(self, pixels, classes=10, style_dim=4, hidden=256, temperature=0.5):
        super().__init__()
        self.classes, self.style_dim = classes, style_dim
        self.encoder = nn.ModuleDict({
            "body": nn.Sequential(nn.Linear(pixels, hidden), nn.ReLU()),
            "class_logits": nn.Linear(hidden, classes),
            "style": nn.Linear(hidden + classes, 2 * style_dim)})
        self.decoder = nn.Sequential(nn.Linear(classes + style_dim, hidden), nn.ReLU(),
                                     nn.Linear(hidden, pixels))
        self.register_buffer("temperature", torch.tensor(temperature))

    def model(self, x):
        pyro.module("decoder", self.decoder)
        flat = x.reshape(len(x), -1)
        with pyro.plate("data", len(x)):
            label = pyro.sample("class", dist.RelaxedOneHotCategorical(
                self.temperature, logits=flat.new_zeros(self.classes)))
            style = pyro.sample("style", dist.Normal(flat.new_zeros(self.style_dim), 1.0)
                                .to_event(1))
            logits = self.decoder(torch.cat([label, style], -1))
            pyro.sample("obs", dist.Bernoulli(logits=logits, validate_args=False)
                        .to_event(1), obs=flat)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        flat = x.reshape(len(x), -1)
        with pyro.plate("data", len(x)):
            h = self.encoder["body"](flat)
            label = pyro.sample("class", dist.RelaxedOneHotCategorical(
                self.temperature, logits=self.encoder["class_logits"](h)))
            h = torch.cat([h.expand(*label.shape[:-1], h.shape[-1]), label], -1)
            loc, scale = self.encoder["style"](h).chunk(2, -1)
            pyro.sample("style", dist.Normal(loc, nn.functional.softplus(scale) + 1e-4)
                        .to_event(1))


# ---- pyrovae on both ---------------------------------------------------------------------

def study(name, vae, data, args, out: Path) -> dict:
    """Train ``vae`` with pyrovae, then evaluate, check and compare it; a summary row."""
    pyro.set_rng_seed(0)
    trainer = Trainer(vae, "trace", lr=1e-3)  # the pair as written: nothing to change
    history = trainer.fit(data.train_x, args.epochs, batch_size=128, test_x=data.test_x)
    test = data.test_x[:args.test_limit]
    elbo = evaluate_elbo(vae, test)
    nll = log_likelihood(vae, test, samples=args.nll_samples)
    print(f"\n== {name}: {args.epochs} epochs, {sum(p.numel() for p in vae.parameters())} "
          f"parameters ==")
    print(f"test ELBO {elbo:.2f} nats per image; IS log P(X), k={args.nll_samples}: "
          f"{nll.mean:.2f} +- {nll.se:.2f} (s.e. over images; Monte-Carlo s.e. "
          f"{nll.mc_se:.3f})")
    report = {**check_kl(vae, test[:64], draws=args.draws), "model": name}
    print(format_report(report))
    rows = compare_estimators(vae, test[:64], [EstimatorSpec("trace"), EstimatorSpec("iwae", 5),
                                               EstimatorSpec("iwae_dreg", 5)],
                              repeats=args.repeats)
    print(format_table(rows))
    generator = Generator(vae, data.test_x)
    with torch.no_grad():
        samples = generator.sample(64).reshape(-1, *data.image_shape)
        recon = generator.reconstruct(test[:32]).reshape(-1, *data.image_shape)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 5))
    left.imshow(image_grid(samples, rows=8), cmap="gray")
    left.set_title(f"{name}: 64 samples, E[X|z], z ~ P(z)")
    right.imshow(image_grid(torch.cat([test[:32], recon]), rows=8), cmap="gray")
    right.set_title("test images (top) and reconstructions (bottom)")
    for ax in (left, right):
        ax.axis("off")
    fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return {"model": name, "test_elbo": elbo, "nll": -nll.mean, "kl_check": report["agree"],
            "train_elbo": history[-1]["train_elbo"]}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits", choices=("digits", "mnist"))
    parser.add_argument("--data-dir", help="torchvision-layout data folder (for mnist)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--nll-samples", type=int, default=500)
    parser.add_argument("--test-limit", type=int, default=300)
    parser.add_argument("--draws", type=int, default=100, help="check_kl's shared draws")
    parser.add_argument("--repeats", type=int, default=20, help="compare's repeats")
    parser.add_argument("--out", default="byo", help="folder for the figures")
    args = parser.parse_args(argv)
    data = load_dataset(args.dataset, args.data_dir)
    pixels = data.train_x[0].numel()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [study("tutorial_vae", TutorialVAE(z_dim=10, hidden_dim=256, pixels=pixels), data,
                  args, out),
            study("class_style_vae", ClassStyleVAE(pixels), data, args, out)]
    print(f"\n{'model':<18}{'train ELBO':>12}{'test ELBO':>11}{'test NLL':>10}  check-kl")
    for row in rows:
        print(f"{row['model']:<18}{row['train_elbo']:>12.2f}{row['test_elbo']:>11.2f}"
              f"{row['nll']:>10.2f}  {'agree' if row['kl_check'] else 'DISAGREE'}")
    print(f"figures in {out}/")
    return rows


if __name__ == "__main__":
    main()
