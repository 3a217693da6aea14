"""The run folder written: its file names and frame columns, atomic writes, RunFolder and provenance."""
from __future__ import annotations

import io
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from . import __version__
from .config import BSQConfig

__all__ = ["INFO", "CHECKPOINT", "FLOAT_MODEL", "MODEL", "TRACES", "TRACE_COLUMNS", "RUN_FILES", "FRAME_COLUMNS", "BIT_COLUMNS",
           "LAYER_COLUMNS", "frame_file", "check_name", "prepare_root", "write_atomic", "write_frame",
           "_summarize", "RunFolder"]

INFO, CHECKPOINT, FLOAT_MODEL, MODEL = "run.json", "checkpoint.pt", "float.pt", "model.pt"
BIT_COLUMNS = ["layer", "layer_index", "bit", "nbits", "density", "norm"]
LAYER_COLUMNS = ["layer", "layer_index", "kind", "numel", "nbits", "scale", "lsb_offset"]
_KEYS = ["stage", "epoch", "step"]
FRAME_COLUMNS = {
    "metrics": _KEYS + ["train_loss", "reg_loss", "train_acc", "test_acc", "avg_bits", "compression", "lr",
                        "seconds"],
    "bits": _KEYS + BIT_COLUMNS,
    "layers": _KEYS + LAYER_COLUMNS,
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}$")


def frame_file(kind: str) -> str:
    """The file of a frame: metrics, bits or layers .parquet."""
    return f"{kind}.parquet"


TRACES = "traces.parquet"  # a Hessian twin's layer traces (sensitivity.layer_traces of its float model)
TRACE_COLUMNS = ["layer", "layer_index", "numel", "trace", "trace_std", "samples"]  # the columns of that frame
RUN_FILES = (INFO, CHECKPOINT, FLOAT_MODEL, MODEL, TRACES, *(frame_file(k) for k in FRAME_COLUMNS))


def _file_mode() -> int:
    mask = os.umask(0)  # the only way to read it; set back at once, at import, before any thread
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()  # run files are as readable as any file the user makes (a shared runs root)


def check_name(name: str) -> str:
    """A run name is one plain folder name: letters, digits and . _ + = -, no separators, no '..'."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:  # match() let "x\n" through
        raise ValueError(f"bad run name {name!r:.60}: use 1 to 128 letters, digits and . _ + = - "
                         "(no slashes, no '..')")
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
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600 whatever the umask
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


def _write_json(path: Path, info: dict) -> None:
    write_atomic(path, json.dumps(_json_safe(info), indent=2).encode())


def write_frame(path: Path, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_atomic(path, buffer.getvalue())


SUMMARY_KEYS = ("test_acc", "bsq_acc", "avg_bits", "compression")


def _summarize(metrics: pd.DataFrame) -> dict:
    """The summary of a finished run: the last epoch's test_acc, avg_bits and compression, and
    bsq_acc, the test accuracy at the end of BSQ (before finetuning); None where there is none."""
    def last(rows: pd.DataFrame, column: str) -> float | None:
        return float(rows[column].iloc[-1]) if len(rows) else None

    bsq = metrics[metrics.stage == "bsq"]
    values = (last(metrics, "test_acc"), last(bsq, "test_acc"), last(metrics, "avg_bits"), last(metrics, "compression"))
    return dict(zip(SUMMARY_KEYS, values))


# --- provenance -------------------------------------------------------------------------------

def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _this_process() -> dict:
    """The provenance of the process writing a run (a resumed run records its new writer)."""
    import psutil
    import torch

    return dict(host=socket.gethostname(), pid=os.getpid(), started=psutil.Process().create_time(),
                threads=torch.get_num_threads())


def _clear(path: Path) -> None:
    """Remove the files a run writes (and half-written ones) from its folder; a user's own files stay."""
    for entry in [path / name for name in RUN_FILES] + list(path.glob(".*.tmp")):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


class RunFolder:
    """Writes one run's folder: run.json, the frames after every epoch, checkpoint.pt, float.pt and model.pt."""

    def __init__(self, path: Path, info: dict, frames: dict[str, pd.DataFrame]):
        self.path, self.info, self.frames = path, info, frames

    @classmethod
    def create(cls, path: Path, config: BSQConfig, device: str, sweep: str | None = None,
               data: dict | None = None) -> "RunFolder":
        """A new run at path (its parent must exist), status running; replaces the files of a run of
        that name, and keeps any other file in its folder. data: what the run keeps of its dataset
        (data.Dataset.record())."""
        import torch

        made = not path.is_dir()
        if made:
            path.mkdir()
        else:
            _clear(path)
        info = dict(config=config.to_dict(), sweep=sweep, status="running", error=None, summary={}, data=data,
                    provenance=dict(package=__version__, torch=torch.__version__, python=platform.python_version(),
                                    git_sha=_git_sha(), device=str(device), seed=config.seed,
                                    start=_now(), end=None, **_this_process()))
        folder = cls(path, info, {k: pd.DataFrame(columns=c) for k, c in FRAME_COLUMNS.items()})
        try:
            folder._write_info()
        except OSError:  # leave no run files without run.json behind: they would list as damaged
            if made:
                shutil.rmtree(path, ignore_errors=True)
            else:
                _clear(path)
            raise
        return folder

    @classmethod
    def reopen(cls, path: Path, info: dict, frames: dict[str, pd.DataFrame], done: int,
               data: dict | None = None) -> "RunFolder":
        """Continue the run at path, read as info and frames: keep the rows of its first `done`
        epochs (those its checkpoint holds); a later, unsaved epoch is re-run. data: as for create."""
        for tmp in path.glob(".*.tmp"):  # half-written files of a killed process
            tmp.unlink(missing_ok=True)
        metrics = frames["metrics"].iloc[:done]
        keys = set(zip(metrics.stage, metrics.epoch))
        frames = {k: frame[[key in keys for key in zip(frame.stage, frame.epoch)]].reset_index(drop=True)
                  for k, frame in frames.items()}
        info.update(status="running", error=None, data=data)
        info["provenance"].update(end=None, **_this_process())
        folder = cls(path, info, frames)
        folder._write_info()
        return folder

    def _write_info(self) -> None:
        _write_json(self.path / INFO, self.info)

    def append(self, key: str, rows: pd.DataFrame) -> None:
        """Add an epoch's rows to a frame and rewrite its file."""
        old = self.frames[key]
        self.frames[key] = rows if old.empty else pd.concat([old, rows], ignore_index=True)
        write_frame(self.path / frame_file(key), self.frames[key])

    def _save(self, name: str, obj) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save(obj, buffer)
        write_atomic(self.path / name, buffer.getvalue())

    def save_checkpoint(self, state: dict) -> None:
        self._save(CHECKPOINT, state)

    def save_float(self, state_dict: dict) -> None:
        self._save(FLOAT_MODEL, state_dict)

    def save_model(self, exported: dict) -> None:
        self._save(MODEL, exported)

    def finish(self) -> None:
        """Mark the run finished, with the summary of its metrics."""
        self._end("finished", None, _summarize(self.frames["metrics"]))

    def fail(self, reason: str) -> None:
        self._end("failed", reason, {})

    def stop(self) -> None:
        """Mark the run stopped by the user: every finished epoch stays, and resume goes on."""
        self._end("stopped", None, {})

    def _end(self, status: str, error: str | None, summary: dict) -> None:
        self.info.update(status=status, error=error)
        self.info["summary"].update(summary)
        self.info["provenance"]["end"] = _now()
        self._write_info()
