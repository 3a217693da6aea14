"""Where things live: the checkout, its shipped examples, new runs and datasets (one rule each)."""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["REPO", "CHECKOUT", "EXAMPLES", "RUNS", "DATASETS", "SHARED_CIFAR10", "APP", "runs_root",
           "check_not_examples", "data_root"]

REPO = Path(__file__).resolve().parents[1]
# else installed from a wheel: REPO is then site-packages, where another package's pyproject.toml could lie
CHECKOUT = (REPO / "pyproject.toml").is_file() and 'name = "bsq_explore"' in (REPO / "pyproject.toml").read_text()
# A checkout keeps everything in data/; an installed kit in the user's data folder (~/.local/share/bsq_explore
# on Linux), never in site-packages, and finds the shipped examples where $BSQ_EXAMPLES says (a checkout's
# data/examples), else in that folder's examples/
_HOME = REPO / "data" if CHECKOUT else platformdirs.user_data_path("bsq_explore")
EXAMPLES = REPO / "data" / "examples" if CHECKOUT else Path(os.environ.get("BSQ_EXAMPLES") or _HOME / "examples")
RUNS = _HOME / "runs"                   # new runs unless told otherwise (ignored by git in a checkout)
DATASETS = _HOME / "datasets"           # torchvision downloads unless $BSQ_DATA says otherwise
SHARED_CIFAR10 = REPO.parent / "shared" / "datasets" / "cifar10"  # the CIFAR-10 JPEG folder beside a checkout
APP = REPO / "app" / "main.py" if CHECKOUT else Path(__file__).parent / "app" / "main.py"  # the wheel's copy


def runs_root(path: str | os.PathLike | None = None) -> Path:
    """The folder new runs go to: path, else $BSQ_RUNS, else RUNS (data/runs of this checkout, or
    the user's data folder: the same folder whatever the working folder, so the CLI and a notebook
    agree). $BSQ_RUNS may not be the shipped examples, which notebooks would overwrite; an explicit
    path may (`make examples` writes them)."""
    if path:
        return Path(path)
    if not os.environ.get("BSQ_RUNS"):
        return RUNS
    root = Path(os.environ["BSQ_RUNS"])
    check_not_examples(root, f"BSQ_RUNS={root}")
    return root


def check_not_examples(root: Path, what: str) -> None:
    """Refuse a runs root in or inside the shipped examples, which only `make examples` writes."""
    if root.resolve().is_relative_to(EXAMPLES.resolve()):
        raise ValueError(f"{what} is inside the shipped examples ({EXAMPLES}), which the kit writes only with "
                         "`make examples`; point it at another folder")


def data_root() -> Path:
    """Where torchvision datasets are kept: $BSQ_DATA, else DATASETS (data/datasets of this checkout)."""
    return Path(os.environ["BSQ_DATA"]) if os.environ.get("BSQ_DATA") else DATASETS
