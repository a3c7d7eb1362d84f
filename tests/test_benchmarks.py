"""The benchmark scripts run (smoke sizes) and write the rows other tools read.

No timing is asserted here: timings live in benchmarks/ and docs/BENCHMARKS.md.
"""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def require_mnist(data_dir: Path) -> None:
    """Skip, with the reason, where real MNIST is not on this machine."""
    if not (data_dir / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found under {data_dir}/MNIST/raw")


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_speed_benchmark_rows(shared_data_dir, tmp_path, capsys):
    require_mnist(shared_data_dir)
    speed = load_script("speed")
    out = tmp_path / "rows.json"
    speed.main(["--data-dir", str(shared_data_dir), "--limit", "1024", "--batch-sizes", "256",
                "--device", "cpu", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows] == ["pyro_example", "pyrovae_eager", "pyrovae_traced",
                                            "torch_eager", "matmul_floor"]
    for row in rows:
        assert {"variant", "device", "batch_size", "seconds_per_epoch", "test_elbo"} <= set(row)
        assert row["seconds_per_epoch"] > 0 and row["batch_size"] == 256
    by_name = {r["variant"]: r for r in rows}
    # same seed, same initialisation, same draws: pyrovae's loss is the hand-written one's
    assert math.isclose(by_name["pyrovae_eager"]["test_elbo"],
                        by_name["torch_eager"]["test_elbo"], rel_tol=1e-3)
    # the traced step draws what the eager one does (its products: default or oneDNN)
    assert math.isclose(by_name["pyrovae_traced"]["test_elbo"],
                        by_name["pyrovae_eager"]["test_elbo"], rel_tol=1e-4)
    # the GEMM limit: the step's products at the best rate measured, the same for every row
    limits = {(r["gemm_limit_seconds"], r["gemm_limit_library"]) for r in rows}
    assert len(limits) == 1 and next(iter(limits))[0] > 0
    out = capsys.readouterr().out
    assert "| pyrovae_eager | 256 |" in out and "GEMM limit: " in out
    assert "time / GEMM limit |" in out


def test_gemm_limit_counts_the_steps_products_and_uses_the_best_rate():
    limit = load_script("gemm_limit")
    layers = [(784, 400), (400, 100), (50, 400), (400, 784)]
    shapes = limit.step_products(layers, 256)
    # forward and weight gradient of every layer, input gradient of all but the first
    assert len(shapes) == 3 * len(layers) - 1
    assert shapes[:5] == [(256, 784, 400), (784, 256, 400),
                          (256, 400, 100), (256, 100, 400), (400, 256, 100)]
    per_step = sum(2 * 256 * i * o * (2 if n == 0 else 3) for n, (i, o) in enumerate(layers))
    assert limit.flops(shapes) == per_step
    found = limit.gemm_limit(layers, 256, steps=10, device=torch.device("cpu"), repeats=2)
    assert found.gflop_per_epoch == pytest.approx(10 * per_step / 1e9)
    assert found.best.best == max(r.best for r in found.rates) > 0
    assert found.seconds_per_epoch == pytest.approx(found.gflop_per_epoch / found.best.best)
    assert {r.library for r in found.rates} >= {"torch"}
    assert "GEMM limit: " in found.describe() and found.best.library in found.describe()


def test_own_model_benchmark_trains_pyros_example_both_ways_alike(shared_data_dir, tmp_path,
                                                                   capsys):
    require_mnist(shared_data_dir)
    own = load_script("own_model")
    out = tmp_path / "rows.json"
    rows = own.main(["--data-dir", str(shared_data_dir), "--limit", "512", "--rounds", "2",
                     "--device", "cpu", "--json", str(out)])
    assert [r["variant"] for r in rows] == ["pyro_svi", "pyrovae"]
    assert json.loads(out.read_text()) == rows
    # the same initial weights, batches and draws: SVI and pyrovae train the same model
    assert math.isclose(rows[0]["test_elbo"], rows[1]["test_elbo"], rel_tol=1e-3)
    assert rows[0]["ratio_to_pyro_svi"] == 1.0 and len(rows[1]["all_seconds"]) == 2
    assert "| pyrovae |" in capsys.readouterr().out


def test_speed_benchmark_iwae_arch_is_the_same_model_by_hand(shared_data_dir, capsys):
    require_mnist(shared_data_dir)
    speed = load_script("speed")
    rows = speed.main(["--data-dir", str(shared_data_dir), "--limit", "512", "--batch-sizes",
                       "128", "--device", "cpu", "--arch", "iwae", "--variants",
                       "pyrovae_eager", "torch_eager"])
    by_name = {r["variant"]: r for r in rows}
    assert {r["arch"] for r in rows} == {"iwae"}
    # two tanh layers of 200 each way, on both sides: the same loss from the same seed
    assert math.isclose(by_name["pyrovae_eager"]["test_elbo"],
                        by_name["torch_eager"]["test_elbo"], rel_tol=1e-3)
    assert "arch iwae" in capsys.readouterr().out


def test_reproduce_iwae_trains_resumes_and_writes_the_table(shared_data_dir, tmp_path, capsys):
    require_mnist(shared_data_dir)
    iwae = load_script("reproduce_iwae")
    docs = tmp_path / "BENCH.md"
    docs.write_text("# title\n<!-- iwae-table -->\nold\n<!-- /iwae-table -->\ntail\n")
    args = ["--data-dir", str(shared_data_dir), "--rows", "iwae-k5", "--budget-minutes",
            "0.02", "--batch-size", "64", "--train-limit", "256", "--test-limit", "20",
            "--nll-k", "20", "--device", "cpu", "--out", str(tmp_path / "out"),
            "--docs", str(docs), "--lr", "1e-3"]
    [result] = iwae.main(args)
    assert result["row"] == "iwae-k5" and result["epochs"] >= 1
    assert result["steps"] == result["epochs"] * (256 // 64)
    assert result["train_seconds"] >= 0.02 * 60  # stops only once the budget is spent
    assert math.isfinite(result["nll"]) and result["nll_se"] > 0 and result["nll_k"] == 20
    # a bound: the k = 20 IS estimate of -log p(x) is at most the one-sample ELBO's, up to
    # noise (20 test images: a loose, but not vacuous, margin)
    assert result["nll"] <= -result["test_elbo"] + 5.0
    text = docs.read_text()
    assert text.startswith("# title\n<!-- iwae-table -->\n| row |") and text.endswith(
        "<!-- /iwae-table -->\ntail\n") and "old" not in text
    assert "| iwae-k5 | iwae K=5" in text and "| 85.54 |" in text
    # one curve point per epoch, in order, ending where the record ends; and its figure
    curve = result["curve"]
    assert [c["epoch"] for c in curve] == list(range(1, result["epochs"] + 1))
    assert curve[-1]["minutes"] == pytest.approx(result["train_seconds"] / 60)
    assert curve[-1]["train_elbo"] == result["train_elbo"] and curve[0]["lr"] == pytest.approx(1e-3)
    for figure in (tmp_path / "out" / "curves.png", tmp_path / "images" / "iwae_curves.png"):
        assert figure.stat().st_size > 1000, figure
    # run again: the budget is spent, so the checkpoint is the result; nothing is retrained
    capsys.readouterr()
    [again] = iwae.main(args)
    assert again["epochs"] == result["epochs"] and again["nll"] == result["nll"]
    assert "continuing from epoch" in capsys.readouterr().out
    # another schedule with the same folder is refused, naming both
    with pytest.raises(SystemExit, match="was trained with schedule"):
        iwae.main(args[:5] + ["0.05"] + args[6:])


def test_reproduce_iwae_chooses_averaged_or_trained_weights_on_a_validation_split(
        shared_data_dir, tmp_path, capsys):
    require_mnist(shared_data_dir)
    iwae = load_script("reproduce_iwae")
    args = ["--data-dir", str(shared_data_dir), "--rows", "vae-k1", "--budget-minutes",
            "0.01", "--batch-size", "32", "--train-limit", "288", "--test-limit", "20",
            "--nll-k", "10", "--device", "cpu", "--out", str(tmp_path / "out"),
            "--kl-warmup", "2", "--ema-decay", "0.9", "--validation", "32",
            "--validation-k", "10"]
    [result] = iwae.main(args)
    assert result["n_train"] == 256 and result["steps"] == result["epochs"] * 8
    assert result["ema_decay"] == 0.9 and result["n_validation"] == 32
    found = result["validation"]
    best = min(found, key=lambda w: found[w]["validation_nll"])
    assert result["weights"] == best and set(found) == {"trained", "averaged"}
    assert all(math.isfinite(v["validation_nll"]) and v["validation_nll_se"] > 0
               for v in found.values())
    out = capsys.readouterr().out
    assert "validation NLL, averaged weights" in out
    assert f"KL warm-up 2 epochs, EMA 0.9: {best} weights (chosen on 32 validation images)" \
        in out and result["kl_warmup"] == 2
    # the average is part of the row: resuming with another decay is refused
    with pytest.raises(SystemExit, match="was trained with --ema-decay 0.9, not 0.5"):
        iwae.main(args[:-5] + ["0.5"] + args[-4:])
    with pytest.raises(SystemExit, match="was trained with --kl-warmup 2, not 0"):
        iwae.main(args[:-8] + args[-6:])


@pytest.mark.parametrize("row", ["conv-vae-k1", "dlogistic-vae-k1"])
def test_reproduce_iwae_conv_and_8_bit_rows(shared_data_dir, tmp_path, capsys, row):
    require_mnist(shared_data_dir)
    iwae = load_script("reproduce_iwae")
    args = ["--data-dir", str(shared_data_dir), "--rows", row, "--budget-minutes", "0.01",
            "--batch-size", "32", "--train-limit", "64", "--test-limit", "8", "--nll-k", "4",
            "--device", "cpu", "--out", str(tmp_path / "out")]
    [result] = iwae.main(args)
    assert math.isfinite(result["nll"]) and result["epochs"] >= 1
    out = capsys.readouterr().out
    if row == "conv-vae-k1":
        assert "bits_per_dim" not in result and ", conv |" in out
        assert result["row_spec"]["network"] == "conv"
    else:  # scored on the 8-bit images: the bits/dim are the NLL over 784 ln 2
        assert result["bits_per_dim"] == pytest.approx(result["nll"] / (784 * math.log(2)))
        assert "discretized_logistic on 8-bit images" in out and "bits/dim)" in out
        # a probability of 8-bit values: positive bits; an untrained model starts near 8
        assert 0 < result["bits_per_dim"] < 12


def test_reproduce_iwae_trains_first_then_scores_a_test_subset_and_pairs_rows(
        shared_data_dir, tmp_path, capsys):
    require_mnist(shared_data_dir)
    iwae = load_script("reproduce_iwae")
    out = tmp_path / "out"
    args = ["--data-dir", str(shared_data_dir), "--rows", "vae-k1", "conv-vae-k1",
            "dlogistic-vae-k1", "--budget-minutes", "0.005", "--batch-size", "32",
            "--train-limit", "64", "--test-limit", "40", "--nll-k", "4", "--device", "cpu",
            "--out", str(out)]
    assert iwae.main(args + ["--train-only"]) == []
    for row in ("vae-k1", "conv-vae-k1", "dlogistic-vae-k1"):  # trained, none scored
        assert (out / row / "checkpoint.pt").exists()
        assert not (out / row / "result.json").exists()
    assert "run the same command without --train-only" in capsys.readouterr().out
    results = {r["row"]: r for r in iwae.main(args + ["--test-subset", "10"])}
    subset = torch.load(out / "vae-k1" / iwae.PER_IMAGE, weights_only=True)
    indices = subset["test_indices"]
    # a fixed random 10 of the 40, sorted, the same for every row
    assert len(indices) == 10 and indices.unique().numel() == 10 and indices.max() < 40
    assert torch.equal(indices, indices.sort().values) and not torch.equal(
        indices, torch.arange(10))
    for row, result in results.items():
        assert result["n_test"] == 10 and result["test_subset"] == 10
        per_image = torch.load(out / row / iwae.PER_IMAGE, weights_only=True)
        assert torch.equal(per_image["test_indices"], indices)
        assert float(per_image["nll"].mean()) == pytest.approx(result["nll"])
    # the two binarised rows are paired on the same images; the 8-bit row is not
    d = (torch.load(out / "conv-vae-k1" / iwae.PER_IMAGE, weights_only=True)["nll"]
         - subset["nll"])
    printed = capsys.readouterr().out
    assert (f"conv-vae-k1 - vae-k1: {float(d.mean()):+.2f} ± "
            f"{float(d.std() / math.sqrt(10)):.2f} nats (paired, 10 test images)") in printed
    assert "dlogistic-vae-k1 -" not in printed and "- dlogistic-vae-k1" not in printed
    # scored alone, in a fresh process state, a row gets the very same numbers: the rows
    # trained and scored before it in one process do not leak into it
    (out / "conv-vae-k1" / "result.json").unlink()
    [alone] = [r for r in iwae.main(args[:3] + args[4:5] + args[6:] + ["--test-subset", "10"])
               if r["row"] == "conv-vae-k1"]
    assert alone["nll"] == results["conv-vae-k1"]["nll"]
    assert alone["test_elbo"] == results["conv-vae-k1"]["test_elbo"]
    with pytest.raises(SystemExit):
        iwae.main(args + ["--test-subset", "41"])


def test_the_docs_table_keeps_the_rows_of_other_runs():
    iwae = load_script("iwae_table")
    old = ("| row | trained as | paper NLL | pyrovae NLL ± s.e. | epochs |\n|---|---|---|---|---|\n"
           "| vae-k1 | trace K=1 | 86.76 | 88.00 ± 0.24 | 1083 |\n"
           "| iwae-k5 | iwae K=5 | 85.54 | 90.00 ± 0.30 | 9 |\n")
    new = ("| row | trained as | paper NLL | pyrovae NLL ± s.e. | active units | epochs |\n"
           "|---|---|---|---|---|---|\n"
           "| iwae-k5 | iwae K=5 | 85.54 | 86.00 ± 0.25 | 22 | 900 |\n"
           "| vae2-k1 | trace K=1, 2 layers | 85.33 | 96.99 ± 0.30 | 12+0 | 1006 |")
    lines = iwae.merge_tables(old, new).splitlines()
    assert lines[:2] == new.splitlines()[:2]
    # the old vae-k1 row under the new header, first (ROWS order); the old iwae-k5 replaced
    assert lines[2:] == ["| vae-k1 | trace K=1 | 86.76 | 88.00 ± 0.24 | - | 1083 |",
                         "| iwae-k5 | iwae K=5 | 85.54 | 86.00 ± 0.25 | 22 | 900 |",
                         "| vae2-k1 | trace K=1, 2 layers | 85.33 | 96.99 ± 0.30 | 12+0 | 1006 |"]
    assert iwae.merge_tables("old", new) == new


def test_paper_schedule_is_the_papers():
    iwae = load_script("reproduce_iwae")
    schedule = iwae.PaperSchedule()
    assert schedule.batch_size == 20
    assert schedule.lr(1, 0.0) == pytest.approx(1e-3)
    assert schedule.lr(2, 0.0) == pytest.approx(1e-3 * 10 ** (-1 / 7))  # epochs 2-4: i = 1
    assert schedule.lr(4, 0.0) == schedule.lr(2, 0.0) != schedule.lr(5, 0.0)
    assert schedule.lr(3280, 0.0) == pytest.approx(1e-4) and schedule.lr(3281, 0.0) is None
    budget = iwae.BudgetSchedule(10, 128, 1e-3, 1e-4)
    assert budget.lr(1, 0.0) == pytest.approx(1e-3)
    assert budget.lr(9, 300.0) == pytest.approx(10 ** -3.5)  # half-way: geometric mean
    assert budget.lr(99, 600.0) is None


@pytest.mark.slow  # two torchrun launches
def test_scaling_benchmark_rows(tmp_path):
    scaling = load_script("scaling")
    rows = scaling.main(["--procs", "1", "2", "--steps", "3", "--warmup", "1",
                         "--batch-per-rank", "8", "--json", str(tmp_path / "rows.json")])
    assert [r["procs"] for r in rows] == [1, 2]
    assert rows[0]["speedup"] == 1.0 and rows[1]["efficiency"] > 0
    assert json.loads((tmp_path / "rows.json").read_text())[1]["batch_per_rank"] == 8


def test_choose_schedule_scores_pilots_on_held_out_images_and_runs_the_best(
        shared_data_dir, tmp_path, capsys):
    require_mnist(shared_data_dir)
    choose = load_script("choose_schedule")
    out = tmp_path / "pilots"
    args = ["--data-dir", str(shared_data_dir), "--row", "vae-k1", "--pilot-minutes", "0.005",
            "--pilots", "32:1e-3:1e-4", "64:3e-3:1e-4", "--validation", "40",
            "--validation-k", "8", "--train-limit", "296", "--test-limit", "10",
            "--device", "cpu", "--compile", "none", "--out", str(out)]
    rows = choose.main(args + ["--final-minutes", "0.005"])
    assert [(r["batch"], r["lr"], r["lr_end"]) for r in rows] == [(32, 1e-3, 1e-4),
                                                                  (64, 3e-3, 1e-4)]
    best = min(rows, key=lambda r: r["nll"])
    for r in rows:
        assert math.isfinite(r["nll"]) and r["nll_se"] > 0 and r["epochs"] >= 1
        assert r["per_image"].shape == (40,) and r["weights"] == "trained"
        assert float(r["per_image"].mean()) == pytest.approx(r["nll"])
    text = (out / "pilots.md").read_text()
    assert f"**{best['nll']:.2f} ± {best['nll_se']:.2f}**" in text and "+0.00 ± 0.00 |" in text
    printed = capsys.readouterr().out
    command = (f"--batch-size {best['batch']} --lr {best['lr']:g} --lr-end {best['lr_end']:g} "
               "--validation 40")
    assert command in printed
    # the best schedule trained on the same 256 images, into OUT/final, and scored on test
    final = json.loads((out / "final" / "vae-k1" / "result.json").read_text())
    assert final["n_train"] == 256 and final["n_test"] == 10
    assert final["schedule"].startswith(f"budget: 0.005 min, batch {best['batch']},")
    # run again: the pilots' checkpoints and scores are kept, nothing is trained or scored
    again = choose.main(args)
    assert [r["nll"] for r in again] == [r["nll"] for r in rows]
    printed = capsys.readouterr().out
    assert printed.count("continuing from epoch") == 2 and "validation NLL," not in printed
    with pytest.raises(SystemExit):
        choose.main(args[:7] + ["32:1e-3"] + args[9:])  # BATCH:LR:LR_END, not BATCH:LR
