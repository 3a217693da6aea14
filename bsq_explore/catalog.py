"""Many runs at a glance: listings, sweep tables, the summary as text, and a loaded run's cache key."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .config import DATASET_CLASSES, DATASETS, BSQConfig
from .jobs import is_stale
from .runs import DamagedRun, Run, check_frame, load_run, read_info, run_kind
from .store import FRAME_COLUMNS, INFO, RUN_FILES, SUMMARY_KEYS, check_name, frame_file

__all__ = ["list_runs", "chance_accuracy", "sweep_table", "list_sweeps", "load_sweep", "finished_bsq", "epoch_seconds",
           "describe", "caption", "stamp", "sweep_config", "schedule_text"]

_LIST_COLUMNS = ["name", "status", "sweep", "kind", "alpha", "nbits", *SUMMARY_KEYS, "epochs", "chance", "reason",
                 "path"]


def _holds_a_run(entry: Path) -> bool:
    """Whether an entry of a runs root is (or was meant to be) a run folder: a folder with any file
    a run writes (one it cannot read, too), or a symlink that does not resolve. A folder of
    something else (or a run's folder before its run.json) is not listed, not even as damaged."""
    try:
        if not entry.is_dir():
            return entry.is_symlink() and not entry.exists()
        return not set(RUN_FILES).isdisjoint(os.listdir(entry))
    except OSError:
        return True


def list_runs(*roots: str | os.PathLike) -> pd.DataFrame:
    """One row per run folder under the roots, damaged ones included with the reason; never raises.

    status is running, finished, failed, stopped (by the user), damaged, or "running (stale)" for a run marked running
    whose process on this host is gone (killed: it keeps its finished epochs and can be resumed).
    """
    rows = []
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        try:
            entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
        except OSError:  # unreadable root: nothing to list
            continue
        rows += [_row(folder) for folder in entries if _holds_a_run(folder)]
    return pd.DataFrame(rows, columns=_LIST_COLUMNS)


def _row(folder: Path) -> dict:
    """A run folder's row of list_runs."""
    row = dict(name=folder.name, path=str(folder), reason="")
    try:
        try:  # only run names reach the app's pages and figures
            check_name(folder.name)
        except ValueError:
            raise DamagedRun("its name is not a run name (letters, digits and . _ + = - only)") from None
        if not folder.is_dir():
            raise DamagedRun("a symlink that loops or points nowhere")
        info = read_info(folder)
        epochs = [check_frame(folder, kind, info) for kind in FRAME_COLUMNS][0]
        config, summary = info["config"], info.get("summary") or {}
        kind = run_kind(config)
        row.update(status=info["status"], sweep=info.get("sweep"), kind=kind,
                   alpha=config.get("alpha") if kind in ("bsq", "hessian") else None, nbits=config.get("nbits"),
                   epochs=epochs, chance=chance_accuracy(config.get("dataset"), info.get("data")),
                   **{k: summary.get(k) for k in SUMMARY_KEYS})
        if info["status"] == "failed":
            row["reason"] = info.get("error") or ""
        elif info["status"] == "stopped":
            row["reason"] = "stopped before it finished; resume it to go on"
        elif is_stale(info):
            row.update(status="running (stale)", reason=f"process {info['provenance']['pid']} is gone; resume it to go on")
    except DamagedRun as err:
        row.update(status="damaged", reason=str(err))
    except OSError as err:  # say a folder without read permission
        row.update(status="damaged", reason=f"cannot be read ({err.strerror or err})")
    return row


def chance_accuracy(dataset, record) -> float | None:
    """The test accuracy of guessing: 1 / the classes of a run's data (its run.json "data" record's,
    else DATASET_CLASSES for the kit's datasets); None when they are not known."""
    classes = record.get("classes") if isinstance(record, dict) else None
    if isinstance(classes, list) and classes:
        return 1 / len(classes)
    return 1 / DATASET_CLASSES if dataset in DATASETS else None


def sweep_table(runs: pd.DataFrame, sweep: str) -> pd.DataFrame:
    """The sweep's runs from a list_runs() frame: the float run, BSQ runs by alpha, their Hessian twins,
    then uniform baselines by bits."""
    table = runs[runs.sweep == sweep].copy()
    table["order"] = table.kind.map({"float": 0, "bsq": 1, "hessian": 2, "uniform": 3})
    table = table.sort_values(["order", "alpha", "nbits"]).drop(columns="order")
    return table[["name", "kind", "alpha", "nbits", "avg_bits", "compression", "bsq_acc", "test_acc",
                  "status", "chance", "reason"]].reset_index(drop=True)


def list_sweeps(root: str | os.PathLike) -> pd.DataFrame:
    """The sweeps under root, one row each: its name, model, dataset, runs and float accuracy."""
    table = list_runs(root)
    rows = []
    for name in sorted(table.sweep.dropna().unique()):
        part = table[table.sweep == name]
        base = part[(part.kind == "float") & (part.status != "damaged")]
        config = read_info(Path(base.path.iloc[0]))["config"] if len(base) else {}
        rows.append(dict(sweep=name, model=config.get("model"), dataset=config.get("dataset"), runs=len(part),
                         float_acc=base.test_acc.iloc[0] if len(base) else None))
    return pd.DataFrame(rows, columns=["sweep", "model", "dataset", "runs", "float_acc"])


def load_sweep(root: str | os.PathLike, sweep: str) -> dict[float, Run]:
    """The finished BSQ runs of a sweep under root, loaded, by alpha (ascending)."""
    done = finished_bsq(sweep_table(list_runs(root), sweep)).sort_values("alpha")
    return {float(a): load_run(Path(root) / name) for a, name in zip(done.alpha, done.name)}


def finished_bsq(table: pd.DataFrame) -> pd.DataFrame:
    """The finished BSQ runs of a list_runs() or sweep_table() frame."""
    return table[(table.kind == "bsq") & (table.status == "finished")]


def stamp(folder: Path) -> tuple:
    """Changes whenever the run writes an epoch (run.json, then the frames): a cache key of a loaded run."""
    return tuple(os.stat(p).st_mtime_ns if p.exists() else 0
                 for p in (folder / INFO, folder / frame_file("metrics"), folder / frame_file("bits")))


def describe(summary: dict) -> dict[str, str]:
    """A summary as text: test_acc '96.7 %', avg_bits '2.75' ('0 (collapsed)' when no weight is
    left), compression '11.6x'; '–' for what a run has not reported."""
    def text(key, form):
        value = summary.get(key)
        return form(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"
    return dict(test_acc=text("test_acc", lambda v: f"{100 * v:.1f} %"),
                bsq_acc=text("bsq_acc", lambda v: f"{100 * v:.1f} %"),
                avg_bits=text("avg_bits", lambda v: f"{v:.2f}" if v else "0 (collapsed)"),
                compression=text("compression", lambda v: f"{v:.1f}x"))


def sweep_config(table: pd.DataFrame, sweep: str) -> BSQConfig | None:
    """The schedule of a sweep from a list_runs() frame: a BSQ run's config (a uniform baseline's
    when it has none yet) with its float run's pretraining epochs; None before any such run."""
    part = table[(table.sweep == sweep) & (table.status != "damaged")]
    floats, others = part[part.kind == "float"], part[part.kind != "float"].sort_values("kind")
    if floats.empty or others.empty:
        return None
    config = BSQConfig.from_dict(read_info(Path(others.path.iloc[0]))["config"])
    pretrained = BSQConfig.from_dict(read_info(Path(floats.path.iloc[0]))["config"])
    return config.replace(pretrain_epochs=pretrained.pretrain_epochs, pretrain_lr=pretrained.pretrain_lr,
                          pretrain_milestones=pretrained.pretrain_milestones, pretrained="")


def epoch_seconds(root: str | os.PathLike, model: str, dataset: str) -> float | None:
    """The median seconds of an epoch of the finished runs under root that trained model on a dataset
    of dataset's name (a folder's last part: folder:../x/cifar10 counts as cifar10), or None: what an
    epoch of such a run may take on the machine they trained on."""
    name = lambda spec: Path(spec.removeprefix("folder:")).name  # noqa: E731
    table = list_runs(root)
    seconds = [load_run(Path(path)).metrics.seconds for path in table[table.status == "finished"].path
               if (c := read_info(Path(path))["config"])["model"] == model and name(c["dataset"]) == name(dataset)]
    return float(pd.concat(seconds).median()) if seconds else None


def schedule_text(config: BSQConfig) -> str:
    """'resnet20 on cifar10, all training images, 80 float + 11 BSQ + 6 finetune epochs' (a dataset
    folder:PATH: 'on NAME (a folder of images)', NAME the folder's own)."""
    kind, _, path = config.dataset.partition(":")
    dataset = f"{Path(path).name or path} (a folder of images)" if kind == "folder" else config.dataset
    return (f"{config.model} on {dataset}, {config.train_subset or 'all'} training images, "
            f"{config.pretrain_epochs} float + {config.bsq_epochs} BSQ + {config.finetune_epochs} finetune epochs")


def caption(run: Run) -> str:
    """'alpha 0.3: 96.7 % test accuracy, 2.75 bits (11.6x)' (a BSQ run; others say uniform
    3-bit, Hessian twin of alpha 0.3 or float), 'collapsed: no weight left' when nothing is left, else the status."""
    c = run.info["config"]
    what = (f"alpha {c['alpha']:g}" if run.kind == "bsq" else f"uniform {c['nbits']}-bit" if run.kind == "uniform"
            else f"Hessian twin of alpha {c['alpha']:g}" if run.kind == "hessian" else "float")
    if run.summary.get("avg_bits") is None:
        return f"{what}: {run.info['status']}"
    text = describe(run.summary)
    size = "collapsed: no weight left" if run.summary["avg_bits"] == 0 else \
        f"{text['avg_bits']} bits ({text['compression']})"
    return f"{what}: {text['test_acc']} test accuracy, {size}"
