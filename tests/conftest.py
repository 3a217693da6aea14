import copy
import re
import shutil

import pandas as pd
import pytest
import torch
from torch import nn


class Nested(nn.Module):
    """Conv with groups, stride and bias; dilated conv without bias; linear layers at two depths."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=True), nn.ReLU(),
            nn.Sequential(nn.Conv2d(6, 8, 3, padding=2, dilation=2, bias=False), nn.ReLU()),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU())
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        return self.out(self.head(self.features(x)))


@pytest.fixture
def nested():
    torch.manual_seed(0)
    return Nested()


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(3, 4, 8, 8)


def copy_run(run, root, name):
    """A copy of the run folder at run, as root/name."""
    shutil.copytree(run, root / name)
    return root / name


def stopped_copy(run, root, name="stopped"):
    """A copy of the finished run at run, marked stopped: a run resume() takes (it refuses a finished one)."""
    import json

    folder = copy_run(run, root, name)
    info = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps(dict(info, status="stopped")))
    return folder


def one_line(err: str) -> str:
    """err's only line: an error the CLI prints is one line."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def last_line(err: str) -> str:
    """The error of a run that failed under its progress bar: one line, below the bar."""
    lines = err.strip().splitlines()  # the bar's \r updates split into lines too
    assert [line for line in lines if line.startswith("bsq-explore:")] == lines[-1:], lines[-3:]
    assert "Traceback" not in err
    return lines[-1]


def options(config: dict) -> list[str]:
    return [arg for k, v in config.items() for arg in (f"--{k.replace('_', '-')}", str(v))]


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """Timings differ between two runs of the same seed; everything else must not."""
    return frame.drop(columns="seconds", errors="ignore").reset_index(drop=True)


def assert_prefix(part: pd.DataFrame, whole: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(comparable(part), comparable(whole).iloc[:len(part)], check_dtype=False)


def clone(model):
    return copy.deepcopy(model)


TINY = dict(pretrain_epochs=3, bsq_epochs=4, requant_every=2, finetune_epochs=2, alpha=0.3)


@pytest.fixture
def tiny_config():
    from bsq_explore.config import preset

    return preset("digits-mlp", **TINY)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One finished digits run with few epochs, shared by read-only tests."""
    from bsq_explore.config import preset
    from bsq_explore.train import train

    root = tmp_path_factory.mktemp("runs")
    return train(preset("digits-mlp", **TINY), runs=root, name="tiny")


# The files that take longest, started first, so that `make test`'s two workers (pytest-xdist,
# one file per worker at a time) finish together instead of one waiting on a late long file.
LONGEST_FIRST = ["test_browser.py", "test_notebooks.py", "test_kill_and_resume.py", "test_atomic_writes.py",
                 "test_sweep.py", "test_app.py", "test_writers.py", "test_run_folder.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise


def shown(markdown: str) -> str:
    """The text a markdown message shows: dashboard.plain escapes every punctuation mark."""
    return re.sub(r"\\(.)", r"\1", markdown)
