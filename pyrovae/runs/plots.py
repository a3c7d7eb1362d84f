"""Figures: sample grids, reconstructions, ELBO curves, the 2-D latent map.

Each function writes one PNG (atomically, through :func:`save_figure`) and returns its path.
Images are tensors of shape ``(N, C, H, W)`` with values in [0, 1] (C = 1 for grey images).
Figures are drawn on :class:`matplotlib.figure.Figure` objects, never through pyplot, so
importing pyrovae selects no matplotlib backend and needs no display.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pyrovae.models.vae import VAE
from pyrovae.runs.folders import atomic_write

MAX_IMAGES = 10_000  # images in one figure: a grid of 100 x 100


def figure_path(out: str | Path, default_name: str) -> Path:
    """Where a figure asked for with ``--out`` goes: ``out`` itself when it names a ``.png``
    file, ``out/default_name`` when it is an existing folder; ``ValueError`` otherwise."""
    out = Path(out)
    if out.is_dir():
        return out / default_name
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out} must name a .png file or an existing folder")
    return out


def image_grid(images: torch.Tensor, rows: int) -> torch.Tensor:
    """Tile ``(N, C, H, W)`` images (values in [0, 1]) on ``rows`` rows with
    ``torchvision.utils.make_grid``, 1-pixel white lines between and around the tiles.

    Returns ``(rows*(H+1)+1, cols*(W+1)+1)`` for grey images (C = 1), with a trailing RGB
    dim for colour ones (C = 3), on the CPU: ready for ``imshow``.
    """
    images = images.detach().float().cpu().clamp(0, 1)
    from torchvision.utils import make_grid  # here: torchvision takes 2 s to import

    grid = make_grid(images, nrow=math.ceil(len(images) / rows), padding=1, pad_value=1.0)
    return grid[0] if images.shape[1] == 1 else grid.permute(1, 2, 0)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``path``, atomically (a kill leaves the old file whole).

    Works for figures made with :class:`matplotlib.figure.Figure` (what pyrovae draws with:
    no pyplot, no backend to select) and with ``matplotlib.pyplot``; closes the latter.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write(Path(path), lambda f: f.write(buffer.getvalue()))
    if getattr(fig, "number", None) is not None:  # a pyplot figure: release it
        import matplotlib.pyplot as plt

        plt.close(fig)
    return Path(path)


def _show_grid(grid: torch.Tensor, title: str, path: str | Path) -> Path:
    fig = Figure(figsize=(6, 6 * grid.shape[0] / grid.shape[1] + 0.4))
    ax = fig.subplots()
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
    return save_figure(fig, path)


def plot_samples(vae: VAE, path: str | Path, n: int = 64) -> Path:
    """Decoder means f(z) of ``n`` prior draws z ~ P(z), on a square-ish grid."""
    images = vae.sample(n)
    return _show_grid(image_grid(images, rows=int(math.sqrt(n))),
                      f"{n} samples: decoder means of z ~ P(z)", path)


def plot_reconstructions(vae: VAE, x: torch.Tensor, path: str | Path, n: int = 16) -> Path:
    """Rows of test images (odd rows) above their reconstructions (even rows)."""
    x = x[:n]
    recon = vae.reconstruct(x)
    per_row = min(8, len(x))
    pairs = []
    for start in range(0, len(x), per_row):
        pairs += [x[start:start + per_row], recon[start:start + per_row]]
    rows = len(pairs)
    padded = [torch.cat([p, torch.ones(per_row - len(p), *p.shape[1:], device=p.device)])
              for p in pairs]
    grid = image_grid(torch.cat(padded), rows=rows)
    return _show_grid(grid, "test images (odd rows) and reconstructions (even rows)", path)


def plot_curves(history: Sequence[dict], path: str | Path) -> Path:
    """Train and test ELBO (nats per datum) by epoch."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    epochs = [m["epoch"] for m in history]
    for key, label in (("train_elbo", "train"), ("test_elbo", "test")):
        values = [m.get(key) for m in history]
        if any(v is not None for v in values):
            ax.plot(epochs, values, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per datum, higher is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_elbo_by_time(curves: dict[str, Sequence[dict]], path: str | Path,
                      skip_epochs: int = 5) -> Path:
    """Train ELBO (nats per datum) against training time (minutes), one line per run.

    ``curves`` maps a run's name to its entries, each with ``"minutes"`` and
    ``"train_elbo"``. The first ``skip_epochs`` entries of each run still move fast; the y
    range leaves them out so that the end of training, where runs differ by tenths of a
    nat, stays readable.
    """
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    tails = []
    for name, curve in curves.items():
        ax.plot([c["minutes"] for c in curve], [c["train_elbo"] for c in curve], label=name)
        # an epoch whose steps were all skipped as non-finite has a NaN train ELBO
        tails += [v for c in curve[skip_epochs:] if math.isfinite(v := c["train_elbo"])]
    if tails:
        low, high = min(tails), max(tails)
        pad = 0.05 * (high - low) + 0.1
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("train ELBO (nats per datum, higher is better)")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend()
    return save_figure(fig, path)


def plot_runs(curves: dict[str, Sequence[dict]], path: str | Path) -> Path:
    """Several runs on one figure: test ELBO (solid) and train ELBO (dashed, the same
    colour) by epoch on the left, test ELBO by training time (minutes) on the right.

    ``curves`` maps a run's label to its ``metrics.jsonl`` epoch entries (``epoch``,
    ``train_elbo``, ``test_elbo``, ``seconds``)."""
    fig = Figure(figsize=(11, 4.2))
    by_epoch, by_time = fig.subplots(1, 2)
    for index, (label, history) in enumerate(curves.items()):
        colour = f"C{index % 10}"
        epochs = [m["epoch"] for m in history]
        minutes = list(itertools.accumulate((m.get("seconds") or 0.0) / 60 for m in history))
        test = [m.get("test_elbo") for m in history]
        by_epoch.plot(epochs, test, color=colour, label=label)
        by_epoch.plot(epochs, [m.get("train_elbo") for m in history], color=colour,
                      linestyle="--", alpha=0.6)
        by_time.plot(minutes, test, color=colour, label=label)
    by_epoch.set_xlabel("epoch")
    by_epoch.set_ylabel("ELBO (nats per datum; test solid, train dashed)")
    by_time.set_xlabel("training time (minutes)")
    by_time.set_ylabel("test ELBO (nats per datum)")
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
    if curves:
        by_time.legend(fontsize="small")
    return save_figure(fig, path)


@torch.no_grad()
def plot_latent(vae: VAE, x: torch.Tensor, labels: torch.Tensor, path: str | Path,
                grid_size: int = 15) -> Path:
    """For ``z_dim == 2``: test codes mu(X) coloured by label, and the decoded manifold.

    The manifold decodes z on a ``grid_size`` x ``grid_size`` lattice of standard-normal
    quantiles (5% to 95%), as in Kingma and Welling's figure 4.
    """
    if vae.z_dim != 2:
        raise ValueError(f"plot_latent needs z_dim == 2, the model has z_dim {vae.z_dim}")
    loc = vae.encode(x).cpu()
    quantiles = torch.linspace(0.05, 0.95, grid_size)
    axis = torch.distributions.Normal(0.0, 1.0).icdf(quantiles)
    z = torch.stack(torch.meshgrid(axis, axis.flip(0), indexing="xy"), -1).reshape(-1, 2)
    images = vae.decode(z.to(vae.device))
    fig = Figure(figsize=(12, 5.5))
    left, right = fig.subplots(1, 2)
    points = left.scatter(loc[:, 0], loc[:, 1], c=labels.cpu(), cmap="tab10", s=6)
    fig.colorbar(points, ax=left, label="label")
    left.set_title("test codes: the guide's location of each X")
    left.set_xlabel("z[0]")
    left.set_ylabel("z[1]")
    right.imshow(image_grid(images, rows=grid_size).numpy(), cmap="gray", vmin=0, vmax=1)
    right.set_title("decoded z on a grid of N(0, 1) quantiles")
    right.axis("off")
    return save_figure(fig, path)


def plot_image_table(columns: Sequence[tuple[str, torch.Tensor]], path: str | Path,
                     title: str, row_labels: Sequence[str] | None = None) -> Path:
    """A table of images: one row per input, one titled column (or group) per entry.

    Args:
        columns: ``(heading, images)`` pairs; ``images`` is ``(R, C, H, W)`` (one column) or
            ``(k, R, C, H, W)`` (k columns under one heading), values in [0, 1].
        path: the PNG to write.
        title: the figure's title.
        row_labels: optional text left of each of the R rows.
    """
    groups = [(heading, images if images.dim() == 5 else images[None])
              for heading, images in columns]
    rows = groups[0][1].shape[1]
    cells = torch.cat([images.transpose(0, 1) for _, images in groups], 1)  # (R, cols, ...)
    cols = cells.shape[1]
    h, w = cells.shape[-2:]
    grid = image_grid(cells.reshape(rows * cols, *cells.shape[2:]), rows=rows)
    fig = Figure(figsize=(0.6 * cols + 1, 0.6 * rows + 0.8))
    ax = fig.subplots()
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    start = 0
    for heading, images in groups:  # a heading centred over its columns
        k = images.shape[0]
        ax.text((start + k / 2) * (w + 1) + 0.5, -0.5, heading, ha="center", va="bottom",
                fontsize=8)
        start += k
    if row_labels is not None:
        for r, label in enumerate(row_labels):
            ax.text(-0.5, 1 + r * (h + 1) + h / 2, label, ha="right", va="center",
                    fontsize=8)
    ax.set_title(title, pad=14, fontsize=9)
    ax.axis("off")
    return save_figure(fig, path)


def plot_comparison(rows: list[dict], path: str | Path) -> Path:
    """One panel per measure, one bar per estimator: bound +- sd, the gradient SNR of each
    parameter group (encoder, decoder, ...), ms per step."""
    labels = [row["estimator"] for row in rows]
    groups = [key.removesuffix("_snr") for key in rows[0] if key.endswith("_snr")]
    panels = [("bound", "bound_sd", "bound, nats per datum (+- sd across repeats)"),
              *((f"{g}_snr", None, f"{g} gradient SNR") for g in groups),
              ("ms_per_step", None, "ms per loss + backward")]
    fig = Figure(figsize=(4 * len(panels), 0.4 * len(rows) + 1.5))
    axes = fig.subplots(1, len(panels), sharey=True)
    for ax, (key, error, title) in zip(axes, panels):
        values = [row[key] for row in rows]
        if error:  # a bound is a point on an axis of nats, not a bar from 0
            ax.errorbar(values, labels, xerr=[row[error] for row in rows], fmt="o")
        else:
            ax.barh(labels, values)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    return save_figure(fig, path)


def plot_activity(activity: dict[str, dict], path: str | Path) -> Path:
    """Burda's unit activity A_u = Cov_X(E_Q[u|X]), one panel per latent site: every unit's
    activity, sorted (log scale, z units squared), with the threshold of an active unit.

    ``activity`` maps a site to its summary (``evaluation.json``'s ``active_units``: ``active``,
    ``units``, ``threshold``, ``activity``; :meth:`SiteActivity.summary
    <pyrovae.inference.active_units.SiteActivity.summary>`)."""
    fig = Figure(figsize=(4.5 * max(1, len(activity)), 3.6))
    axes = fig.subplots(1, max(1, len(activity)), squeeze=False)[0]
    for ax, (site, a) in zip(axes, activity.items()):
        threshold = a["threshold"]
        values = sorted((max(v, 1e-8) for v in a["activity"]), reverse=True)
        ax.bar(range(1, len(values) + 1), values, width=1.0,
               color=["C0" if v > threshold else "C7" for v in values])
        ax.axhline(threshold, color="C3", linestyle="--", linewidth=1,
                   label=f"threshold {threshold:g}")
        ax.set_yscale("log")
        ax.set_xlabel("unit (sorted by activity)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"site {site}: {a['active']} of {a['units']} units active", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_ylabel("Cov_X(E_Q[u | X])")
    return save_figure(fig, path)
