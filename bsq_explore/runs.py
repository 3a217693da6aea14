"""The run folder: atomic writes of run.json and the frames after every epoch, loading, listing."""
from __future__ import annotations

import io
import json
import math
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .config import BSQConfig
from .stats import BIT_COLUMNS, LAYER_COLUMNS

STAGES = ("pretrain", "bsq", "finetune")
STATUSES = ("running", "finished", "failed")
METRIC_COLUMNS = ["stage", "epoch", "step", "train_loss", "reg_loss", "train_acc", "test_acc",
                  "avg_bits", "compression", "lr", "seconds"]
FRAME_COLUMNS = {
    "metrics": METRIC_COLUMNS,
    "bits": ["stage", "epoch", "step"] + BIT_COLUMNS,
    "layers": ["stage", "epoch", "step"] + LAYER_COLUMNS,
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}$")


class DamagedRun(Exception):
    """A run folder that cannot be read; the message says why in one line."""


def runs_root(path: str | os.PathLike | None = None) -> Path:
    """The folder new runs go to: path, else $BSQ_RUNS, else data/runs."""
    return Path(path or os.environ.get("BSQ_RUNS") or "data/runs")


def check_name(name: str) -> str:
    """A run name is one plain folder name: letters, digits and . _ + = -, no separators, no '..'."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:  # match() let "x\n" through
        raise ValueError(f"bad run name {name!r}: use letters, digits and . _ + = - (no slashes, no '..')")
    return name


def prepare_root(root: Path) -> Path:
    """Create the runs root and prove it takes a file, so a bad root fails before any training."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root) as probe:  # os.access says yes to root on any mode
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise OSError(f"cannot write to runs root {root} ({err.strerror or err})") from err
    return root


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside path, flush it to disk, then rename over path."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_safe(value):
    """NaN and inf become None, so run.json stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, info: dict) -> None:
    write_atomic(path, json.dumps(_json_safe(info), indent=2).encode())


def write_frame(path: Path, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_atomic(path, buffer.getvalue())


@dataclass
class Run:
    """A loaded run folder: run.json as a dict and the three frames."""
    path: Path
    info: dict
    metrics: pd.DataFrame
    bits: pd.DataFrame
    layers: pd.DataFrame

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def stale(self) -> bool:
        return is_stale(self.info)


def process_alive(info: dict) -> bool | None:
    """Whether the process that wrote the run still exists; None when that cannot be told
    (another host, or not POSIX)."""
    provenance = info.get("provenance") or {}
    pid = provenance.get("pid")
    if provenance.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0 \
            or os.name != "posix":  # Windows' os.kill would end the process
        return None
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by someone else
        return True
    try:  # a killed child that its parent (say, the app) has not reaped yet is a zombie: gone too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc here
        return True


def is_stale(info: dict) -> bool:
    """True for a run marked running whose process is gone: it was killed and can be resumed.

    Only a process on this host can be checked; a run from another host is never called stale.
    """
    return info.get("status") == "running" and process_alive(info) is False


def _frame_path(folder: Path, kind: str, info: dict) -> Path | None:
    """The frame's file, or None when a running run has not written it yet."""
    path = folder / f"{kind}.parquet"
    if path.exists():
        return path
    if info["status"] == "running" or (kind != "metrics" and not info["config"].get("bsq_epochs")
                                       and not info["config"].get("finetune_epochs")):
        return None  # not written yet, or a float run, which has no bit frames
    raise DamagedRun(f"{path.name} is missing")


def _check_columns(name: str, kind: str, columns) -> None:
    missing = [c for c in FRAME_COLUMNS[kind] if c not in columns]
    if missing:
        raise DamagedRun(f"{name} lacks columns {', '.join(missing)}")


def unreadable(path: Path, err: Exception) -> DamagedRun:
    """The DamagedRun for a file that fails to parse, with the parser's first line."""
    return DamagedRun(f"{path.name} is unreadable ({type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]})")


def _read_frame(folder: Path, kind: str, info: dict) -> pd.DataFrame:
    path = _frame_path(folder, kind, info)
    if path is None:
        return pd.DataFrame(columns=FRAME_COLUMNS[kind])
    try:  # one read of one file: given a path, pyarrow takes its size and opens it apart, and a rename
        frame = pd.read_parquet(io.BytesIO(path.read_bytes()))  # in between tears the read
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise unreadable(path, err) from None
    _check_columns(path.name, kind, frame.columns)
    return frame


def _check_frame(folder: Path, kind: str, info: dict) -> int:
    """Validate a frame from its footer alone (cheap, for listings); returns its row count."""
    import pyarrow.parquet as pq

    path = _frame_path(folder, kind, info)
    if path is None:
        return 0
    try:
        with open(path, "rb") as file:  # one open, as in _read_frame
            meta = pq.read_metadata(file)
    except Exception as err:
        raise unreadable(path, err) from None
    _check_columns(path.name, kind, meta.schema.names)
    return meta.num_rows


def read_info(folder: Path) -> dict:
    path = Path(folder) / "run.json"
    if not path.exists():
        raise DamagedRun("run.json is missing")
    try:
        info = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DamagedRun(f"run.json is not valid JSON ({err})") from None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict) or "status" not in info:
        raise DamagedRun("run.json lacks its config or status")
    if info["status"] not in STATUSES:
        raise DamagedRun(f"run.json has an unknown status {info['status']!r}")
    if not isinstance(info.get("summary") or {}, dict) or not isinstance(info.get("provenance") or {}, dict):
        raise DamagedRun("run.json has a summary or provenance that is not a mapping")
    try:
        BSQConfig.from_dict(info["config"])
    except (ValueError, TypeError) as err:
        raise DamagedRun(f"run.json has a bad config ({str(err).splitlines()[0][:120]})") from None
    return info


def load_run(path: str | os.PathLike) -> Run:
    """Read a run folder; raises DamagedRun with the reason when a file is missing or broken.

    Safe while the run writes: each file is read whole from one open, so it is never torn, but
    the files are read one after another, so bits and layers may hold one epoch more than metrics
    (which an epoch writes last).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DamagedRun(f"{folder} is not a run folder")
    info = read_info(folder)
    return Run(folder, info, *(_read_frame(folder, kind, info) for kind in ("metrics", "bits", "layers")))


LIST_COLUMNS = ["name", "status", "sweep", "kind", "alpha", "nbits", "test_acc", "bsq_acc", "avg_bits",
                "compression", "epochs", "reason", "path"]


def run_kind(config: dict) -> str:
    """bsq, uniform (a fixed-precision baseline) or float (pretraining only)."""
    if config.get("bsq_epochs", 0) > 0:
        return "bsq"
    return "uniform" if config.get("finetune_epochs", 0) > 0 else "float"


def list_runs(*roots: str | os.PathLike) -> pd.DataFrame:
    """One row per run folder under the roots, damaged ones included with the reason; never raises.

    status is running, finished, failed, damaged, or "running (stale)" for a run marked running
    whose process on this host is gone (killed: it keeps its finished epochs and can be resumed).
    """
    rows = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            row = dict(name=folder.name, path=str(folder), reason="")
            try:
                info = read_info(folder)
                epochs = [_check_frame(folder, kind, info) for kind in FRAME_COLUMNS][0]
                config, summary = info["config"], info.get("summary") or {}
                kind = run_kind(config)
                row.update(status=info["status"], sweep=info.get("sweep"), kind=kind,
                           alpha=config.get("alpha") if kind == "bsq" else None, nbits=config.get("nbits"),
                           epochs=epochs,
                           **{k: summary.get(k) for k in ("test_acc", "bsq_acc", "avg_bits", "compression")})
                if info["status"] == "failed":
                    row["reason"] = info.get("error") or ""
                elif is_stale(info):
                    row.update(status="running (stale)",
                               reason=f"process {info['provenance']['pid']} is gone; resume it to go on")
            except DamagedRun as err:
                row.update(status="damaged", reason=str(err))
            rows.append(row)
    return pd.DataFrame(rows, columns=LIST_COLUMNS)


def sweep_table(runs: pd.DataFrame, sweep: str) -> pd.DataFrame:
    """The sweep's runs from a list_runs() frame, BSQ runs by alpha then baselines by bits."""
    table = runs[runs.sweep == sweep].copy()
    table["order"] = table.kind.map({"float": 0, "bsq": 1, "uniform": 2})
    table = table.sort_values(["order", "alpha", "nbits"]).drop(columns="order")
    return table[["name", "kind", "alpha", "nbits", "avg_bits", "compression", "bsq_acc", "test_acc",
                  "status", "reason"]].reset_index(drop=True)
