"""Datasets: fixed splits, image folders, balanced subsets and batched augmentation."""
import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from bsq_explore import data
from bsq_explore.data import MAX_PIXELS, augment, batches, load, read_idx
from bsq_explore.paths import SHARED_CIFAR10
from bsq_explore.uploads import read_tensor

CIFAR = SHARED_CIFAR10
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


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


@pytest.mark.skipif(not CIFAR.is_dir() and not os.environ.get("CI"), reason=f"{CIFAR} is absent")
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


def idx_bytes(array: torch.Tensor) -> bytes:
    """The IDX encoding written out by hand: 0 0, type 0x08 (unsigned byte), ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.dim()]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + bytes(array.flatten().tolist())


def write_idx_set(folder: Path, train=12, test=6, gz=True):
    """Four IDX files of 28x28 images whose pixels all equal their label, as the dataset packages ship them."""
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", test)):
        labels = torch.arange(n, dtype=torch.uint8) % 3
        images = labels.view(n, 1, 1).expand(n, 28, 28) * 80
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = folder / f"{prefix}-{kind}-ubyte"
            if gz:
                with gzip.open(f"{name}.gz", "wb") as f:
                    f.write(idx_bytes(array))
            else:
                name.write_bytes(idx_bytes(array))


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_gives_back_what_was_written(tmp_path, gz):
    write_idx_set(tmp_path, gz=gz)
    images = read_idx(tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else "")))
    assert images.shape == (12, 28, 28) and images.dtype == torch.uint8
    assert images[:, 5, 7].tolist() == [80 * (i % 3) for i in range(12)]


def test_a_damaged_idx_file_is_a_clear_error(tmp_path):
    (tmp_path / "bad").write_bytes(b"\0\0\x08\x01" + (10).to_bytes(4, "big") + b"short")
    with pytest.raises(ValueError, match="its header says"):
        read_idx(tmp_path / "bad")
    (tmp_path / "png").write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "png")


@pytest.fixture
def no_system_data(tmp_path, monkeypatch):
    monkeypatch.setenv("BSQ_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(data, "SYSTEM_DATA", tmp_path / "system")
    return tmp_path


@pytest.mark.parametrize("name, where, gz", [("fashion-mnist", "FashionMNIST/raw", True), ("mnist", "", False),
                                             ("fashion-mnist", "system", True)])
def test_idx_datasets_are_found_in_each_layout(no_system_data, name, where, gz):
    folder = (no_system_data / "system" / name if where == "system"
              else no_system_data / "data" / name / where)  # torchvision's <Class>/raw, or the files flat
    write_idx_set(folder, gz=gz)
    ds = load(name)
    assert ds.shape == (1, 28, 28) and len(ds.train_y) == 12 and len(ds.test_y) == 6 and len(ds.classes) == 10
    assert ds.train_y.tolist() == [i % 3 for i in range(12)] and not ds.augment
    brighter = [ds.train_x[ds.train_y == c].mean().item() for c in range(3)]
    assert brighter == sorted(brighter)  # pixels follow the labels through normalization


def test_a_missing_idx_dataset_names_every_place_looked_and_how_to_get_it(no_system_data):
    with pytest.raises(FileNotFoundError, match="FashionMNIST/raw.*system/fashion-mnist.*--download.*apt-get"):
        load("fashion-mnist")


def test_download_fetches_into_the_data_root_then_reads_it(no_system_data, monkeypatch):
    fetched = []

    def fake_fetch(name):  # torchvision's download, minus the internet: files in torchvision's layout
        fetched.append(name)
        write_idx_set(no_system_data / "data" / name / "MNIST" / "raw")
    monkeypatch.setattr(data, "_fetch", fake_fetch)
    assert len(load("mnist", download=True).train_y) == 12 and fetched == ["mnist"]
    assert len(load("mnist", download=True).train_y) == 12 and fetched == ["mnist"], "found: no second download"


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir() and not os.environ.get("CI"),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_the_debian_package():
    ds = load("fashion-mnist", test_subset=1000)
    assert len(ds.train_y) == 60000 and len(ds.test_y) == 1000 and ds.shape == (1, 28, 28)
    assert ds.train_y.bincount().tolist() == [6000] * 10 and ds.classes[9] == "Ankle boot"


def _npy(array) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _pt(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class _Payload:
    """A pickle that, if loaded unsafely, creates the file at self.path."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_read_tensor_round_trips_good_uploads():
    import numpy as np

    w = torch.arange(12, dtype=torch.float32).reshape(3, 4) - 5.5
    assert torch.equal(read_tensor("w.npy", _npy(w.numpy())), w)
    assert torch.equal(read_tensor("w.pt", _pt(w)), w)
    assert torch.equal(read_tensor("w.csv", b"1,2,3\n-4,5.5,6\n"), torch.tensor([[1, 2, 3], [-4, 5.5, 6]]))
    assert torch.equal(read_tensor("i.NPY", _npy(np.array([1, -2], dtype=np.int8))), torch.tensor([1.0, -2.0]))


def test_read_tensor_refuses_bad_uploads_in_one_line(tmp_path):
    import pickle

    import numpy as np

    cases = {
        "nan.npy": (_npy(np.array([1.0, np.nan])), "NaN or infinite"),
        "inf.pt": (_pt(torch.tensor([float("inf")])), "NaN or infinite"),
        "complex.npy": (_npy(np.array([1 + 2j])), "complex numbers"),
        "complex.pt": (_pt(torch.tensor([1 + 2j])), "complex numbers"),
        "objects.npy": (_npy(np.array([{}, 1], dtype=object)), "Python objects"),
        "text.npy": (_npy(np.array(["a"])), "non-numeric"),
        "big.npy": (_npy(np.zeros(1001, dtype=np.float32)), "1,001 numbers: upload at most 1,000"),
        "big.pt": (_pt(torch.zeros(20_000)), "MB: upload at most 1,000"),
        "state.pt": (_pt({"fc.weight": torch.ones(2)}), "a dict of 1 entries (a state_dict?)"),
        "payload.pt": (pickle.dumps(_Payload(tmp_path / "ran")), "not a tensor file that can be loaded safely"),
        "payload2.pt": (_pt(_Payload(tmp_path / "ran")), "not a tensor file that can be loaded safely"),
        "junk.npy": (b"\x93NUMPY junk", "not a .npy array file"),
        "cut.npy": (_npy(np.ones(100))[:-40], "truncated or unreadable"),
        "words.csv": (b"1,2\n3,x\n", "comma-separated numbers"),
        "empty.csv": (b"", "no numbers"),
        "w.txt": (b"1", "upload a .npy, .pt or .csv"),
    }
    for name, (raw, says) in cases.items():
        with pytest.raises(ValueError) as err:
            read_tensor(name, raw, max_elements=1000)
        assert says in str(err.value) and "\n" not in str(err.value) and "weights_only" not in str(err.value), name
    assert not (tmp_path / "ran").exists(), "no pickled code ran"


def test_test_classes_that_training_lacks_are_an_error_not_dropped(tmp_path):
    root = make_folder(tmp_path)
    (root / "test" / "bird").mkdir()
    Image.new("RGB", (8, 8)).save(root / "test" / "bird" / "0.png")
    with pytest.raises(ValueError, match="has classes that .* lacks: bird"):
        load(f"folder:{root}")


def test_train_and_test_images_of_different_sizes_are_refused_before_decoding(tmp_path, monkeypatch):
    root = make_folder(tmp_path)
    for file in (root / "test").glob("*/*.png"):
        Image.new("RGB", (6, 6)).save(file)
    decoded = []
    monkeypatch.setattr(Image.Image, "convert", lambda self, *a: decoded.append(1))
    with pytest.raises(ValueError, match="train images are 8x8 pixels but test images"):
        load(f"folder:{root}")
    assert not decoded, "only headers were read"


def test_a_huge_image_is_refused_from_its_header(tmp_path):
    root = make_folder(tmp_path)
    side = int(MAX_PIXELS ** 0.5) + 1
    Image.new("RGB", (side, side)).save(root / "train" / "dog" / "0.png")  # one colour: a small file
    with pytest.raises(ValueError, match=f"dog/0.png is {side}x{side} pixels"):
        load(f"folder:{root}")


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0 not a jpeg", "truncated"])
def test_a_corrupt_image_is_named(tmp_path, content):
    root = make_folder(tmp_path)
    bad = root / "train" / "cat" / "9.jpg"
    if content == "truncated":
        Image.new("RGB", (8, 8), (200, 10, 10)).save(bad)
        bad.write_bytes(bad.read_bytes()[:-200])
    else:
        bad.write_bytes(content)
    with pytest.raises(ValueError, match=f"{re.escape(str(bad))} is not a readable image"):
        load(f"folder:{root}")


def test_a_folder_too_big_for_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_free_memory", lambda: 1000)
    with pytest.raises(ValueError, match="would need .* GiB of memory.*--train-subset"):
        load(f"folder:{make_folder(tmp_path)}")


def test_a_runs_test_split_reads_back_alone_equal_to_the_full_load(tmp_path, monkeypatch):
    import json

    from bsq_explore.config import BSQConfig
    from bsq_explore.data import load_for, load_test, synthetic_image_folder

    images = synthetic_image_folder(tmp_path / "images", classes=4, train_per_class=16, test_per_class=8)
    config = BSQConfig(dataset=f"folder:{images}", model="resnet20")
    full = load_for(config)
    record = json.loads(json.dumps(full.record()))  # as run.json keeps it
    assert record["shape"] == [3, 32, 32] and record["classes"] == full.classes and len(record["mean"]) == 3
    decoded = []
    monkeypatch.setattr(data, "_decode", lambda f, decode=data._decode: decoded.append(f) or decode(f))
    alone = load_test(config, record)
    assert decoded and all(f.parts[-3] == "test" for f in decoded)  # no training image decoded
    assert torch.equal(alone.test_x, full.test_x) and torch.equal(alone.test_y, full.test_y)  # bit for bit
    assert alone.shape == full.shape and len(alone.train_x) == 0 and alone.classes == full.classes
    sample = load_test(config, record, 12)
    assert sample.test_y.bincount().tolist() == [3, 3, 3, 3]
    assert all(any(torch.equal(x, y) for y in full.test_x) for x in sample.test_x)
    assert torch.equal(sample.test_x, load_test(config, record, 12).test_x)  # the same sample every time
    assert torch.equal(load_test(config, None, 12).test_x, sample.test_x)  # a run without the record: a full load
    for bad in ("text", dict(record, mean="0.5"), dict(record, std=[]), dict(record, mean=[True, 1, 1])):
        assert torch.equal(load_test(config, bad, 12).test_x, sample.test_x)  # a crafted record: a full load too
