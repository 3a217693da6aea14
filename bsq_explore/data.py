"""Datasets held in memory as tensors, with batched augmentation (random crop with padding, flip)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import CUSTOM, DATASETS
from .paths import SHARED_CIFAR10, data_root

__all__ = ["Dataset", "load", "load_for", "load_test", "load_for_model", "load_splits", "SYSTEM_DATA", "IDX",
           "read_idx", "MAX_PIXELS", "augment", "batches", "synthetic_image_folder", "cifar10_source"]

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


@dataclass
class Dataset:
    """Normalized float images (N, C, H, W) and int64 labels, for one train and one test split."""
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    augment: bool  # random crop (padding 4) and horizontal flip while training
    mean: list[float] | None = None  # per channel, of the training split: what standardized the images
    std: list[float] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def to(self, device: torch.device | str) -> "Dataset":
        move = lambda t: t.to(device)  # noqa: E731
        return Dataset(self.name, move(self.train_x), move(self.train_y), move(self.test_x), move(self.test_y),
                       self.classes, self.augment, self.mean, self.std)

    def record(self) -> dict:
        """What a run keeps of its data (run.json "data"), so that load_test can read the test split
        back alone: the image shape, the classes and the standardization."""
        return dict(shape=list(self.shape), classes=list(self.classes), mean=self.mean, std=self.std)


def load(name: str, train_subset: int = 0, test_subset: int = 0, download: bool = False, seed: int = 0) -> Dataset:
    """Load a dataset by name: digits (default, no download), mnist, fashion-mnist, cifar10, folder:PATH.

    mnist and fashion-mnist are read from IDX files found by _idx_folders (Debian's
    dataset-fashion-mnist among them); download=True fetches what is missing with torchvision.
    train_subset / test_subset > 0 keep that many images, the same share of every class, chosen
    with a fixed seed; every run on the same data then sees the same images.
    """
    subsets = (train_subset, test_subset)
    if name == "digits":
        ds = _digits(subsets, seed)
    elif name.startswith("folder:"):
        ds = _folder(Path(name.split(":", 1)[1]).expanduser(), subsets, seed)
    elif name in IDX:
        ds = _idx(name, download, subsets, seed)
    elif name == "cifar10":
        ds = _cifar10(download, subsets, seed)
    elif name.startswith(CUSTOM):
        raise ValueError(f"dataset {name!r} was given to fit(), so the kit cannot load it (fit() again resumes a run)")
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}, folder:PATH")
    return _normalized(ds)


def load_splits(train, test) -> Dataset:
    """A Dataset of one's own data for fit(): train and test each (x, y) tensors, or an iterable of
    (x, y) batches (a DataLoader), read once into memory (the engine batches from tensors, so a
    loader's random transforms run once, not every epoch). Labels are 0..classes - 1."""
    (train_x, train_y), (test_x, test_y) = _tensors(train, "train"), _tensors(test, "test")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"train and test items differ in shape: {tuple(train_x.shape[1:])} and {tuple(test_x.shape[1:])}")
    classes = int(max(train_y.max(), test_y.max())) + 1
    if min(train_y.min(), test_y.min()) < 0:
        raise ValueError("labels must be class numbers 0, 1, 2, ...")
    name = CUSTOM + (type(getattr(train, "dataset", train)).__name__ if not isinstance(train, (tuple, list)) else "tensors")
    return Dataset(name, train_x, train_y, test_x, test_y, [str(c) for c in range(classes)], False)


def _tensors(split, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x float32, y int64) of a split given as an (x, y) pair or an iterable of (x, y) batches."""
    if isinstance(split, (tuple, list)) and len(split) == 2 and all(isinstance(t, torch.Tensor) for t in split):
        x, y = split
    else:
        try:
            batches = [(b[0], b[1]) for b in split]
            x, y = torch.cat([torch.as_tensor(b[0]) for b in batches]), torch.cat([torch.as_tensor(b[1]) for b in batches])
        except (TypeError, IndexError, KeyError, RuntimeError) as err:  # KeyError: batches of dicts
            raise ValueError(f"{which} must be (x, y) tensors or a DataLoader of (x, y) batches ({err})") from None
    if len(x) == 0 or len(x) != len(y) or y.dim() != 1 or y.is_floating_point():
        raise ValueError(f"{which}: give as many integer labels y as items x, at least one")
    return x.float(), y.long()


def load_for(config) -> Dataset:
    """The dataset a run's config (a BSQConfig) names, with its subsets: the data the run trains on."""
    return load(config.dataset, config.train_subset, config.test_subset, config.download)


def load_test(config, record: dict | None, count: int = 0) -> Dataset:
    """The test split a run's config names, with no training images: count of them (all when 0;
    the same share of every class, a fixed choice). An image folder is read without decoding its
    training split when record (the run's Dataset.record()) holds the standardization."""
    if config.dataset.startswith("folder:") and _standardization(record):
        path = Path(config.dataset.split(":", 1)[1]).expanduser()
        classes = sorted(p.name for p in (path / "train").iterdir() if p.is_dir())
        if classes != record["classes"]:
            raise ValueError(f"{path / 'train'} has other classes than the run trained on")
        files, labels, _ = _listed(path / "test", classes, config.test_subset, 1)  # as load(): seed 0, + 1
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (record["mean"], record["std"]))
        x = (torch.stack([_decode(f) for f in files]).float() / 255 - mean) / std
        ds = Dataset(config.dataset, x[:0], torch.tensor([], dtype=torch.int64), x, torch.tensor(labels), classes,
                     True, record["mean"], record["std"])
    else:  # the other datasets load whole in a second or two
        ds = load_for(config)
    keep = _keep(ds.test_y, count, seed=0)
    ds.train_x, ds.train_y, ds.test_x, ds.test_y = ds.train_x[:0], ds.train_y[:0], ds.test_x[keep], ds.test_y[keep]
    return ds


def load_for_model(config, record) -> Dataset:
    """A run's data as building its model needs it: no images at all when its run.json "data" record
    gives the shape and classes (runs record them), else the data config names, loaded."""
    return _from_record(record) or load_for(config)


def _from_record(record) -> Dataset | None:
    """A Dataset with no images, of the shape and classes of a run.json "data" record; None when the
    record lacks them (runs from before it)."""
    if not isinstance(record, dict):
        return None
    shape, classes = record.get("shape"), record.get("classes")
    if not (isinstance(shape, list) and shape and all(type(v) is int and v > 0 for v in shape)
            and isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        return None
    none, labels = torch.zeros(0, *shape), torch.zeros(0, dtype=torch.int64)
    return Dataset("", none, labels, none, labels, classes, False, record.get("mean"), record.get("std"))


def _standardization(record) -> bool:
    """Whether a run.json "data" record holds a usable standardization (anything else: load the data whole)."""
    return (isinstance(record, dict) and isinstance(record.get("classes"), list) and
            all(isinstance(record.get(k), list) and record[k] and all(isinstance(v, (int, float)) and not
                isinstance(v, bool) for v in record[k]) and len(record[k]) == len(record["mean"]) for k in ("mean", "std")))


def _keep(y: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Indices of count items (all when count is 0), spread evenly over the classes, seeded order."""
    if not count or count >= len(y):
        return torch.arange(len(y))
    g = torch.Generator().manual_seed(seed)
    per_class = -(-count // len(y.unique()))
    picks = [idx[torch.randperm(len(idx), generator=g)[:per_class]]
             for idx in (torch.nonzero(y == c).view(-1) for c in y.unique())]
    chosen = torch.cat(picks)
    return chosen[torch.randperm(len(chosen), generator=g)][:count].sort().values


def _digits(subsets, seed) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8), values 0..16
    y = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # fixed split, whatever the run seed
    test, train = order[: len(y) // 5], order[len(y) // 5:]
    train, test = train[_keep(y[train], subsets[0], seed)], test[_keep(y[test], subsets[1], seed + 1)]
    return Dataset("digits", x[train], y[train], x[test], y[test], [str(i) for i in range(10)], augment=False)


# IDX datasets (MNIST's format): where they are looked for, in order, and what they hold
SYSTEM_DATA = Path("/usr/share/datasets")  # Debian's dataset-fashion-mnist installs here
IDX = {"mnist": ("MNIST", [str(i) for i in range(10)]),
       "fashion-mnist": ("FashionMNIST", ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                          "Sneaker", "Bag", "Ankle boot"])}
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (gzipped or not) as a uint8 tensor of the shape its header gives."""
    import gzip

    import numpy as np

    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
        raw = file.read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    body = raw[4 + 4 * ndim:]
    if len(body) != math.prod(shape):
        raise ValueError(f"{path} holds {len(body)} bytes, its header says {shape}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).view(shape)


def _idx_folders(name: str) -> list[Path]:
    """Where an IDX dataset may live: the data root (flat, or torchvision's <Class>/raw), then the system's."""
    root = data_root() / name
    return [root, root / IDX[name][0] / "raw", SYSTEM_DATA / name]


def _find_idx(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


def _idx(name: str, download: bool, subsets, seed) -> Dataset:
    """MNIST or Fashion-MNIST read from their IDX files, wherever _idx_folders finds all four."""
    def complete(folder):
        return all(_find_idx(folder, stem) for pair in _IDX_FILES.values() for stem in pair)

    folder = next((f for f in _idx_folders(name) if complete(f)), None)
    if folder is None and download:
        _fetch(name)
        folder = next((f for f in _idx_folders(name) if complete(f)), None)
    if folder is None:
        places = ", ".join(map(str, _idx_folders(name)))
        hint = " or apt-get install dataset-fashion-mnist" if name == "fashion-mnist" else ""
        raise FileNotFoundError(f"{name} is not under {places}; pass --download to fetch it (needs internet){hint}")

    def split(part, count, split_seed):
        images, labels = (read_idx(_find_idx(folder, stem)) for stem in _IDX_FILES[part])
        keep = _keep(labels.long(), count, split_seed)
        return images[keep].unsqueeze(1).float() / 255, labels[keep].long()  # (N, 1, 28, 28)

    return Dataset(name, *split("train", subsets[0], seed), *split("test", subsets[1], seed + 1), IDX[name][1],
                   augment=False)


def _fetch(name: str) -> None:
    """Download a dataset with torchvision into the data root, in torchvision's layout."""
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST,
           "cifar10": torchvision.datasets.CIFAR10}[name]
    try:
        for train in (True, False):
            cls(data_root() / name, train=train, download=True)
    except (OSError, RuntimeError) as err:
        raise FileNotFoundError(f"could not download {name} into {data_root() / name}: {err}") from None


def _cifar10(download: bool, subsets, seed) -> Dataset:
    import torchvision

    if download:
        _fetch("cifar10")
    root = data_root() / "cifar10"
    try:
        train, test = (torchvision.datasets.CIFAR10(root, train=t) for t in (True, False))
    except RuntimeError as err:
        raise FileNotFoundError(f"cifar10 is not under {root} ({err}); pass --download to fetch it "
                                f"(needs internet), or use folder:PATH for an image folder") from None

    def tensors(split, count, split_seed):
        x = torch.as_tensor(split.data).permute(0, 3, 1, 2)  # (N, 3, 32, 32) uint8
        y = torch.as_tensor(split.targets, dtype=torch.int64)
        keep = _keep(y, count, split_seed)
        return x[keep].float() / 255, y[keep]

    return Dataset("cifar10", *tensors(train, subsets[0], seed), *tensors(test, subsets[1], seed + 1),
                   list(train.classes), augment=True)


MAX_PIXELS = 1 << 22  # per image (2048 x 2048): a training image, never a poster decoded whole


def _folder(path: Path, subsets, seed) -> Dataset:
    """PATH/train/<class>/<image> and PATH/test/<class>/<image>; classes sorted by name. Every
    image's header is checked (readable, one size, not huge, the whole set fits in memory)
    before any image is decoded."""
    if not (path / "train").is_dir() or not (path / "test").is_dir():
        raise FileNotFoundError(f"{path} needs train/ and test/ subfolders of class folders")
    classes = sorted(p.name for p in (path / "train").iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"{path / 'train'} has no class folders")
    extra = sorted({p.name for p in (path / "test").iterdir() if p.is_dir()} - set(classes))
    if extra:  # their images would be dropped without a word
        raise ValueError(f"{path / 'test'} has classes that {path / 'train'} lacks: {', '.join(extra[:5])}")
    train = _listed(path / "train", classes, subsets[0], seed)
    test = _listed(path / "test", classes, subsets[1], seed + 1)
    if train[2] != test[2]:
        raise ValueError(f"train images are {train[2][0]}x{train[2][1]} pixels but test images "
                         f"{test[2][0]}x{test[2][1]}: give both the same size")
    need = 5 * 3 * train[2][0] * train[2][1] * (len(train[0]) + len(test[0]))  # uint8 stack, then float32
    free = _free_memory()
    if free is not None and need > free:
        raise ValueError(f"{path} would need {need / 2**30:.1f} GiB of memory, more than the {free / 2**30:.1f} GiB "
                         "free: use --train-subset and --test-subset")

    def tensors(files: list[Path], labels: list[int]):
        return torch.stack([_decode(f) for f in files]).float() / 255, torch.tensor(labels)

    return Dataset(f"folder:{path}", *tensors(*train[:2]), *tensors(*test[:2]), classes, augment=True)


def _listed(split: Path, classes: list[str], count: int, seed: int) -> tuple[list[Path], list[int], tuple[int, int]]:
    """The images of one split (count of them, spread over the classes; all when 0), their labels
    and their one size (H, W), read from their headers."""
    files, labels = [], []
    for label, cls in enumerate(classes):
        found = sorted(f for f in (split / cls).glob("*") if f.suffix.lower() in _IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    if not files:
        raise FileNotFoundError(f"{split} holds no images")
    keep = _keep(torch.tensor(labels), count, seed).tolist()
    sizes = {_image_size(files[i]) for i in keep}
    if len(sizes) > 1:
        raise ValueError(f"{split}: images differ in size (H x W {sorted(sizes)[:3]}); resize them first")
    return [files[i] for i in keep], [labels[i] for i in keep], sizes.pop()


def _opened(file: Path):
    from PIL import Image

    try:
        return Image.open(file)
    except (OSError, Image.DecompressionBombError, ValueError) as err:  # PIL: OSError for a corrupt file
        raise ValueError(f"{file} is not a readable image ({type(err).__name__})") from None


def _image_size(file: Path) -> tuple[int, int]:
    with _opened(file) as im:  # the header only
        width, height = im.size
    if width * height > MAX_PIXELS:
        raise ValueError(f"{file} is {width}x{height} pixels: resize the images (at most {MAX_PIXELS:,} pixels)")
    return height, width


def _decode(file: Path) -> torch.Tensor:
    import numpy as np

    with _opened(file) as im:
        try:
            pixels = np.array(im.convert("RGB"))
        except (OSError, ValueError) as err:  # a header that reads, then truncated data
            raise ValueError(f"{file} is not a readable image ({type(err).__name__})") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)  # (3, H, W) uint8


def _free_memory() -> int | None:
    """Bytes of memory free now, where the system says (Linux, most Unixes); else None."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _normalized(ds: Dataset) -> Dataset:
    """Per-channel standardization with the training split's statistics."""
    mean = ds.train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = ds.train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    ds.train_x, ds.test_x = (ds.train_x - mean) / std, (ds.test_x - mean) / std
    ds.mean, ds.std = mean.flatten().tolist(), std.flatten().tolist()
    return ds


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch at once."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy, dx, flip = torch.randint(0, 2 * pad + 1, (3, n), generator=generator, device=generator.device)
    rows = (dy.unsqueeze(1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = dx.unsqueeze(1) + torch.arange(w, device=x.device)
    cols = torch.where((flip % 2 == 1).unsqueeze(1), cols.flip(1), cols).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, channel, rows, cols]


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None = None,
            augmented: bool = False):
    """Yield (x, y) batches; shuffled (and augmented if asked) when a generator is given."""
    order = (torch.randperm(len(y), generator=generator, device=generator.device).to(x.device)
             if generator is not None else torch.arange(len(y), device=x.device))
    for start in range(0, len(y), batch_size):
        idx = order[start:start + batch_size]
        xb = x[idx]
        yield (augment(xb, generator) if augmented and generator is not None else xb), y[idx]


def synthetic_image_folder(root: str | os.PathLike, classes: int = 10, train_per_class: int = 26,
                           test_per_class: int = 13, size: int = 32, seed: int = 0) -> Path:
    """A tiny stand-in for CIFAR-10 in the folder layout (root/train/<class>/*.png, root/test/...):
    each class is a noisy image of its own colour and stripe direction, so it is learnable."""
    import numpy as np
    from PIL import Image

    root, rng = Path(root), np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for c in range(classes):
        colour = rng.uniform(40, 215, 3)
        stripes = np.sin((xx * np.cos(np.pi * c / classes) + yy * np.sin(np.pi * c / classes)) / 2.0)
        for part, count in (("train", train_per_class), ("test", test_per_class)):
            folder = root / part / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = colour + 30 * stripes[..., None] + rng.normal(0, 25, (size, size, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


def cifar10_source(fallback: str | os.PathLike | None = None) -> tuple[str, str]:
    """(dataset, note): the shared CIFAR-10 image folder when this checkout has one beside it, else a
    synthetic stand-in made under fallback (default: a new temporary folder), with a note that says which."""
    if (SHARED_CIFAR10 / "train").is_dir() and (SHARED_CIFAR10 / "test").is_dir():
        return f"folder:{SHARED_CIFAR10}", f"Using the CIFAR-10 image folder {SHARED_CIFAR10}."
    import tempfile

    root = synthetic_image_folder(fallback or Path(tempfile.mkdtemp(prefix="bsq-synthetic-cifar10-")))
    return f"folder:{root}", (f"{SHARED_CIFAR10} does not exist, so a tiny synthetic 10-class image folder "
                              f"({root}) stands in: the pipeline runs, but its numbers say nothing about CIFAR-10.")
