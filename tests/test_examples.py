"""Every example runs with smoke arguments; an example missing from the list fails the test.

The README's Python block is run too, exactly as written.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data"

# example file -> smoke arguments ({tmp} is a temporary folder); None: needs real MNIST
EXAMPLES = {
    "quickstart.py": ["--epochs", "2", "--out", "{tmp}/q.png"],
    "mnist_vae.py": ["--data-dir", str(MNIST), "--epochs", "1", "--z-dim", "2",
                     "--out", "{tmp}/mnist"],
    "custom_prior.py": ["--epochs", "1", "--out", "{tmp}/custom_prior"],
    "custom_likelihood.py": ["--epochs", "1", "--out", "{tmp}/custom_likelihood"],
    "swap_prior.py": ["--epochs", "1", "--out", "{tmp}/swap_prior.png"],
    "sigma_tradeoff.py": ["--epochs", "1", "--out", "{tmp}/sigma_tradeoff.png"],
    "naive_vs_importance.py": ["--epochs", "1", "--images", "2", "--max-naive", "1000",
                               "--max-importance", "100", "--out", "{tmp}/nvi.png"],
    "compare_estimators.py": ["--epochs", "1", "--train-limit", "200", "--test-limit", "20",
                              "--nll-samples", "20", "--snr-particles", "1", "3",
                              "--snr-repeats", "5", "--hidden", "16", "--z-dim", "2",
                              "--out", "{tmp}/ce.png"],
    "cvae_mnist.py": ["--dataset", "digits", "--epochs", "1", "--nll-samples", "10",
                      "--out", "{tmp}/cvae"],
    "prior_sweep.py": ["--epochs", "1", "--nll-samples", "5", "--priors", "standard_normal",
                       "vamp", "--out", "{tmp}/sweep"],
    "bring_your_own_model.py": ["--epochs", "1", "--nll-samples", "10", "--test-limit", "64",
                                "--draws", "20", "--repeats", "3", "--out", "{tmp}/byo"],
}
NEEDS_MNIST = {"mnist_vae.py"}
# example file -> (files it must write under {tmp}, strings its output must hold)
WRITES = {
    "prior_sweep.py": (["sweep/sweep.png", "sweep/vamp/evaluation.json",
                        "sweep/standard_normal/metrics.jsonl"],
                       ["| run | prior |", "| vamp |",
                        "sweep.png: 2 runs (prior=standard_normal; prior=vamp)"]),
}


def test_every_example_is_listed():
    present = {p.name for p in (REPO / "examples").glob("*.py")}
    assert present == set(EXAMPLES), f"list these examples in EXAMPLES: {present ^ set(EXAMPLES)}"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name, tmp_path):
    if name in NEEDS_MNIST and not (MNIST / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found under {MNIST}/MNIST/raw")
    args = [a.format(tmp=tmp_path) for a in EXAMPLES[name]]
    result = subprocess.run([sys.executable, str(REPO / "examples" / name), *args],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    files, printed = WRITES.get(name, ([], []))
    for path in files:
        assert (tmp_path / path).is_file(), f"{name} did not write {path}"
    for text in printed:
        assert text in result.stdout, f"{name} did not print {text!r}:\n{result.stdout}"


def test_readme_python_example_runs_as_written(tmp_path):
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README has no ```python block"
    result = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test ELBO" in result.stdout and (tmp_path / "samples.png").is_file()


def test_readme_own_model_example_runs_as_written(tmp_path):
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    own = [b for b in blocks if "Trainer(model=model, guide=guide" in b]
    assert own, "the README's 'Your own Pyro model' block is missing"
    result = subprocess.run([sys.executable, "-c", own[0]], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test log P(X)" in result.stdout and "'latent': {'kl': 'closed form'" in \
        result.stdout
