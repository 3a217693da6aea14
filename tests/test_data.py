"""Datasets: fixed splits, image folders, balanced subsets and batched augmentation."""
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from bsq_explore.data import augment, batches, load

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10"


def test_digits_split_is_fixed_and_normalized():
    a, b = load("digits"), load("digits")
    assert torch.equal(a.test_x, b.test_x) and len(a.train_y) + len(a.test_y) == 1797
    assert a.shape == (1, 8, 8) and abs(a.train_x.mean().item()) < 1e-5
    assert abs(a.train_x.std().item() - 1) < 0.01


def make_folder(root: Path, sizes=(8, 8), per_class=3):
    for part in ("train", "test"):
        for label, cls in enumerate(("cat", "dog")):
            (root / part / cls).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", sizes, (40 * label + i,) * 3).save(root / part / cls / f"{i}.png")
    return root


def test_image_folder_loads_classes_in_name_order(tmp_path):
    ds = load(f"folder:{make_folder(tmp_path)}")
    assert ds.classes == ["cat", "dog"] and ds.shape == (3, 8, 8)
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    # standardized with the training statistics: dogs are brighter than cats
    assert ds.train_x[ds.train_y == 1].mean() > ds.train_x[ds.train_y == 0].mean()


def test_folder_without_splits_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/ and test/"):
        load(f"folder:{tmp_path}")


def test_missing_torchvision_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("BSQ_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--download"):
        load("mnist")


def test_subsets_are_balanced_and_fixed():
    a = load("digits", train_subset=100, test_subset=50)
    b = load("digits", train_subset=100, test_subset=50)
    assert len(a.train_y) == 100 and len(a.test_y) == 50
    assert torch.equal(a.train_x, b.train_x)
    assert a.train_y.bincount().min() >= 9


@pytest.mark.skipif(not CIFAR.is_dir() and not os.environ.get("CI"), reason="../shared/datasets/cifar10 is absent")
def test_real_cifar10_folder_subset():
    ds = load(f"folder:{CIFAR}", train_subset=200, test_subset=100)
    assert ds.shape == (3, 32, 32) and len(ds.classes) == 10 and ds.augment
    assert ds.train_y.bincount().tolist() == [20] * 10


def test_augment_is_a_padded_crop_possibly_flipped():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 6, 6)
    out = augment(x, torch.Generator().manual_seed(3), pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        crops = [padded[i, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in crops)
    assert not torch.equal(out, x)


def test_batches_cover_every_sample_once():
    x, y = torch.arange(10).float().view(10, 1), torch.arange(10)
    seen = torch.cat([yb for _, yb in batches(x, y, 3, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    assert [len(yb) for _, yb in batches(x, y, 4)] == [4, 4, 2]
