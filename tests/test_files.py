"""Your own images: folder:PATH and array:FILE load to the same tensors, bad files are refused
with the file named, the split is fixed and recorded, and the CLI trains on them."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pyrovae.components.data import load_dataset
from pyrovae.components.files import as_images, split
from pyrovae.components.logistic import on_the_grid
from pyrovae.runs.cli import main


def pixels(n=12, shape=(6, 5), channels=1, seed=0):
    g = np.random.default_rng(seed)
    full = (n, *shape) if channels == 1 else (n, *shape, channels)
    return g.integers(0, 256, size=full, dtype=np.uint8)


def write_pngs(folder, images, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{names[i] if names else i:03d}.png")


@pytest.mark.parametrize("channels", [1, 3])
def test_a_folder_of_pngs_and_an_npy_load_to_the_same_tensors(tmp_path, channels):
    images = pixels(channels=channels)
    write_pngs(tmp_path / "pngs", images)
    np.save(tmp_path / "images.npy", images)
    from_folder = load_dataset(f"folder:{tmp_path / 'pngs'}", test_fraction=0.25)
    from_array = load_dataset(f"array:{tmp_path / 'images.npy'}", test_fraction=0.25)
    assert from_folder.image_shape == (channels, 6, 5)
    for a, b in ((from_folder.train_x, from_array.train_x),
                 (from_folder.test_x, from_array.test_x)):
        assert torch.equal(a, b)
    assert len(from_folder.test_x) == 3 and len(from_folder.train_x) == 9
    expected = torch.from_numpy(images).float() / 255
    expected = expected.unsqueeze(1) if channels == 1 else expected.permute(0, 3, 1, 2)
    both = torch.cat([from_array.train_x, from_array.test_x])
    assert torch.equal(torch.sort(both.flatten()).values, torch.sort(expected.flatten()).values)
    assert on_the_grid(both).all()


def test_sub_folders_are_labels_and_train_test_folders_the_split(tmp_path):
    for split_name, n in (("train", 4), ("test", 2)):
        for label, name in enumerate(["cat", "dog"]):
            write_pngs(tmp_path / "pets" / split_name / name, pixels(n, seed=label + n))
    data = load_dataset(f"folder:{tmp_path / 'pets'}")
    assert data.train_y.tolist() == [0] * 4 + [1] * 4 and data.test_y.tolist() == [0, 0, 1, 1]
    assert len(data.test_x) == 4


def test_an_npz_with_labels_and_a_test_set_in_channels_last_layout(tmp_path):
    x, test = pixels(8, channels=3), pixels(3, channels=3, seed=1)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(8), test_x=test)
    data = load_dataset(f"array:{tmp_path / 'd.npz'}")
    assert data.image_shape == (3, 6, 5) and data.train_y.tolist() == list(range(8))
    assert torch.equal(data.test_x, torch.from_numpy(test).permute(0, 3, 1, 2).float() / 255)
    assert data.test_y.tolist() == [0, 0, 0]


def test_the_split_is_fixed_whatever_the_order_of_calls():
    x = torch.arange(20.0).reshape(20, 1, 1, 1) / 20
    y = torch.arange(20)
    first, second = split(x, y, 0.2, "x"), split(x, y, 0.2, "x")
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert len(first[2]) == 4 and set(first[1].tolist()).isdisjoint(first[3].tolist())


@pytest.mark.parametrize("make,message", [
    (lambda d: (d / "bad.png").write_bytes(b"not a png"), r"bad.png is not a readable image"),
    (lambda d: Image.fromarray(pixels(1, (7, 5))[0]).save(d / "999.png"),
     r"999.png is 5x7 pixels, but .*000.png \(the first image\) is 5x6 pixels"),
])
def test_corrupt_and_mixed_size_images_are_refused_naming_the_file(tmp_path, make, message):
    write_pngs(tmp_path / "imgs", pixels(3))
    make(tmp_path / "imgs")
    with pytest.raises(ValueError, match=message):
        load_dataset(f"folder:{tmp_path / 'imgs'}")


@pytest.mark.parametrize("array,message", [
    (np.full((4, 1, 5, 5), np.nan, dtype=np.float32), "contain 100 NaN or infinite values"),
    (np.full((4, 3, 3), 1.5, dtype=np.float32), r"float values must be in \[0, 1\]"),
    (np.full((4, 3, 3), 300, dtype=np.int32), "integer values must be 0..255"),
    (np.zeros((4, 3, 5, 3), dtype=np.uint8), "cannot tell the layout of shape"),
    (np.zeros((4, 5), dtype=np.uint8), r"expected \(N, H, W\)"),
])
def test_bad_arrays_are_refused_naming_the_file(tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(ValueError, match=message) as error:
        load_dataset(f"array:{tmp_path / 'x.npy'}")
    assert "x.npy" in str(error.value)


def test_the_layout_can_be_given_where_the_shape_does_not_say(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 5, 3), dtype=np.uint8))
    assert load_dataset(f"array:{tmp_path / 'x.npy'}", layout="nhwc").image_shape == (3, 3, 5)
    assert as_images(np.zeros((2, 3, 5, 3)), "nchw", "x").shape == (2, 3, 5, 3)


def test_the_cli_trains_and_evaluates_on_an_array_with_the_split_recorded(tmp_path, capsys,
                                                                            monkeypatch):
    np.save(tmp_path / "images.npy", pixels(40, (4, 4)))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "array:images.npy", "--test-fraction", "0.25",
                 "--likelihood", "discretized_logistic", "--logistic-components", "2",
                 "--hidden", "16", "--epochs", "2", "--batch-size", "10", "--out", str(run),
                 "--quiet"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == f"array:{tmp_path / 'images.npy'}"  # absolute
    assert config["test_fraction"] == 0.25
    assert main(["evaluate", str(run), "--nll-samples", "5"]) == 0
    report = json.loads((run / "evaluation.json").read_text())
    assert report["n_test"] == 10 and report["likelihood_kind"].startswith("discrete")
    assert main(["train", "--dataset", "array:missing.npy", "--out", str(tmp_path / "r2"),
                 "--quiet"]) == 2
    assert "missing.npy is not a .npy or .npz file" in capsys.readouterr().err


def test_the_bundled_photo_patches_are_8_bit_colour():
    data = load_dataset("photo-patches")
    assert data.image_shape == (3, 16, 16)
    assert len(data.train_x) + len(data.test_x) == 8216 and len(data.test_x) == 822
    assert on_the_grid(data.train_x[:200]).all() and set(data.train_y.tolist()) == {0, 1}
