"""Burda et al.'s Table 1 as ``benchmarks/reproduce_iwae.py`` fills it: the rows (what each
trains, and the paper's test NLL), and the markdown table of their results, merged into
``docs/BENCHMARKS.md`` between the markers ``<!-- iwae-table -->`` and ``<!-- /iwae-table -->``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pyrovae.runs.folders import atomic_write

BEST_PUBLISHED_K50 = 84.59  # a TensorFlow 2 reproduction of the IWAE k = 50 row


@dataclass(frozen=True)
class Row:
    estimator: str
    particles: int
    paper: float | None  # Burda et al. Table 1, test NLL in nats (k = 5000)
    prior: str = "standard_normal"
    guide: str = "diagonal"
    layers: int = 1  # stochastic layers: 1 (VAE) or 2 (HierarchicalVAE)
    network: str = "mlp"  # or "conv": ConvEncoder / ConvDecoder (one layer only)
    likelihood: str = "bernoulli"  # on binarised images; else the 8-bit images as they are

    @property
    def binarised(self) -> bool:
        return self.likelihood == "bernoulli"


ROWS = {
    "vae-k1": Row("trace", 1, 86.76),
    "vae-k5": Row("trace", 5, 86.47),
    "vae-k50": Row("trace", 50, 86.35),
    "iwae-k5": Row("iwae", 5, 85.54),
    "iwae-k50": Row("iwae", 50, 84.78),
    "dreg-k50": Row("iwae_dreg", 50, None),
    "vamp-iwae-k50": Row("iwae", 50, None, prior="vamp"),
    "flow-iwae-k50": Row("iwae", 50, None, guide="flow"),
    "vae2-k1": Row("trace", 1, 85.33, layers=2),
    "vae2-k5": Row("trace", 5, 85.01, layers=2),
    "vae2-k50": Row("trace", 50, 84.78, layers=2),
    "iwae2-k5": Row("iwae", 5, 83.89, layers=2),
    "iwae2-k50": Row("iwae", 50, 82.90, layers=2),
    "conv-vae-k1": Row("trace", 1, None, network="conv"),
    "dlogistic-vae-k1": Row("trace", 1, None, likelihood="discretized_logistic"),
}


def device_label(env: dict) -> str:
    """``NVIDIA H100 80GB HBM3`` or ``CPU x86_64, 2 threads``."""
    if env["device"].startswith("cuda"):
        return env["device_name"]
    return f"CPU {env['device_name']}, {env['torch_threads']} threads"


def table(results: list[dict]) -> str:
    """Markdown: paper vs pyrovae per row, with device, schedule and wall time."""
    lines = ["| row | trained as | paper NLL | pyrovae NLL ± s.e. | k | active units | epochs | "
             "train time | device | schedule |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: list(ROWS).index(r["row"])):
        row = ROWS[r["row"]]
        paper = f"{row.paper:.2f}" if row.paper is not None else \
            f"(beat {BEST_PUBLISHED_K50})" if row.particles == 50 else "-"
        lines.append(
            f"| {r['row']} | {row.estimator} K={row.particles}, prior {row.prior}, guide "
            f"{row.guide}, {row.layers} layer{'s' if row.layers > 1 else ''}"
            f"{', ' + row.network if row.network != 'mlp' else ''}"
            f"{', ' + row.likelihood + ' on 8-bit images' if not row.binarised else ''}"
            f"{warmup(r)}{averaging(r)} | "
            f"{paper} | "
            f"{r['nll']:.2f} ± {r['nll_se']:.2f}{bits(r)} | {r['nll_k']} | {active(r)} | "
            f"{r['epochs']} | {r['train_seconds'] / 60:.1f} min | {r['device']} | "
            f"{r['schedule']} |")
    return "\n".join(lines)


def bits(result: dict) -> str:
    """`` (1.234 ± 0.003 bits/dim)`` for a row of 8-bit images, else ``""``."""
    if "bits_per_dim" not in result:
        return ""
    return f" ({result['bits_per_dim']:.3f} ± {result['bits_per_dim_se']:.3f} bits/dim)"


def averaging(result: dict) -> str:
    """``, EMA 0.999: averaged weights (chosen on 5000 validation images)`` or ``""``."""
    if not result.get("ema_decay"):
        return ""
    chosen = (f" (chosen on {result['n_validation']} validation images)"
              if "n_validation" in result else "")
    return f", EMA {result['ema_decay']:g}: {result['weights'].split(' (')[0]} weights{chosen}"


def warmup(result: dict) -> str:
    """``, KL warm-up 100 epochs`` or ``""``."""
    epochs = result.get("kl_warmup")
    return f", KL warm-up {epochs} epochs" if epochs else ""


def active(result: dict) -> str:
    """Active units per layer, bottom first (``19``, ``30+8``); ``-`` for a row evaluated
    before the count existed."""
    counts = result.get("active_units")
    return "+".join(str(c) for c in counts.values()) if counts else "-"


def cells(line: str) -> list[str]:
    """The cells of a markdown table line ``| a | b |`` -> ``["a", "b"]``."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def merge_tables(old: str, new: str) -> str:
    """``new`` (a table from :func:`table`) with the rows of the table ``old`` that it does
    not have (same row name and "trained as"): kept in their columns under ``new``'s header,
    ``-`` where ``old`` had no such column; rows in the order of :data:`ROWS`."""
    header, rule, *rows = new.splitlines()
    names = cells(header)
    lines = [line for line in old.splitlines() if line.strip().startswith("|")]
    if len(lines) < 2:
        return new
    old_names, have = cells(lines[0]), {tuple(cells(r)[:2]) for r in rows}
    for line in lines[2:]:
        values = dict(zip(old_names, cells(line)))
        if (values.get("row"), values.get("trained as")) not in have:
            rows.append("| " + " | ".join(values.get(n, "-") for n in names) + " |")
    order = list(ROWS)
    rows.sort(key=lambda r: order.index(cells(r)[0]) if cells(r)[0] in order else len(order))
    return "\n".join([header, rule, *rows])


def write_docs(path: Path, text: str) -> None:
    """Put the table ``text`` between the iwae-table markers of ``path`` (appended if they
    are absent), keeping the rows of the table there that ``text`` does not have (rows
    run with another ``--out``: see :func:`merge_tables`)."""
    begin, end = "<!-- iwae-table -->", "<!-- /iwae-table -->"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        text = merge_tables(old[old.index(begin) + len(begin):old.index(end)], text)
        new = old[:old.index(begin)] + f"{begin}\n{text}\n{end}" + \
            old[old.index(end) + len(end):]
    else:
        new = old + ("\n" if old else "") + f"{begin}\n{text}\n{end}\n"
    atomic_write(path, lambda f: f.write(new.encode()))
