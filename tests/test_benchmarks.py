"""The benchmark scripts run (smoke sizes) and write the rows other tools read.

No timing is asserted here: timings live in benchmarks/ and docs/BENCHMARKS.md.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speed_benchmark_rows(shared_data_dir, tmp_path, capsys):
    if not (shared_data_dir / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found under {shared_data_dir}/MNIST/raw")
    speed = load_script("speed")
    out = tmp_path / "rows.json"
    speed.main(["--data-dir", str(shared_data_dir), "--limit", "1024", "--batch-sizes", "256",
                "--device", "cpu", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows] == ["pyro_example", "pyrovae_eager", "torch_eager",
                                            "matmul_floor"]
    for row in rows:
        assert {"variant", "device", "batch_size", "seconds_per_epoch", "test_elbo"} <= set(row)
        assert row["seconds_per_epoch"] > 0 and row["batch_size"] == 256
    by_name = {r["variant"]: r for r in rows}
    # same seed, same initialisation, same draws: pyrovae's loss is the hand-written one's
    assert math.isclose(by_name["pyrovae_eager"]["test_elbo"],
                        by_name["torch_eager"]["test_elbo"], rel_tol=1e-3)
    assert "| pyrovae_eager | 256 |" in capsys.readouterr().out
