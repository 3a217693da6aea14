"""Where things live: the checkout, its shipped examples, new runs and datasets (one rule each)."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REPO", "EXAMPLES", "RUNS", "DATASETS", "SHARED_CIFAR10", "runs_root", "check_not_examples", "data_root"]

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "data" / "examples"   # the shipped example runs, tracked in git
RUNS = REPO / "data" / "runs"           # new runs unless told otherwise, ignored by git
DATASETS = REPO / "data" / "datasets"   # torchvision downloads unless $BSQ_DATA says otherwise
SHARED_CIFAR10 = REPO.parent / "shared" / "datasets" / "cifar10"  # the CIFAR-10 JPEG folder beside a checkout


def runs_root(path: str | os.PathLike | None = None) -> Path:
    """The folder new runs go to: path, else $BSQ_RUNS, else data/runs of this checkout (the same
    folder whatever the working folder: the CLI and a notebook in notebooks/ agree). $BSQ_RUNS may
    not be the shipped examples, which notebooks would overwrite; an explicit path may
    (`make examples` writes them)."""
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
    """Where torchvision datasets are kept: $BSQ_DATA, else data/datasets of this checkout."""
    return Path(os.environ["BSQ_DATA"]) if os.environ.get("BSQ_DATA") else DATASETS
