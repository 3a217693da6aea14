"""The run folder read: run.json and frames validated, Run and load_run, the run's kind and name."""
from __future__ import annotations

import io
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .config import STAGES, BSQConfig
from .store import CHECKPOINT, FLOAT_MODEL, FRAME_COLUMNS, INFO, MODEL, SUMMARY_KEYS, TRACE_COLUMNS, TRACES, frame_file

__all__ = ["DamagedRun", "Run", "load_run", "read_info", "read_checkpoint", "read_torch", "run_kind", "run_name",
           "check_frame"]

_STATUSES = ("running", "finished", "failed", "stopped")  # stopped: by the user, resumable
_MAX_BYTES = {INFO: 1 << 20, "frame": 1 << 30, "torch": 4 << 30}  # reads refuse bigger files (a /dev/zero link)
# a frame's rows at most: 10,000 epochs of a 20-layer, 8-bit run's bits frame (1.6 million), with room
_MAX_ROWS, _MAX_ROW_GROUPS = 4_000_000, 64
_TEXT_COLUMNS = {"stage", "layer", "kind"}  # every other frame column is a number
_LAYER = re.compile(r"[A-Za-z0-9_.]{1,200}")  # a module's path in its model: conv1, layer1.0.conv2, features.3
_KEY_COLUMNS = {"step", "epoch", "bit"}  # numbers that must be finite: rows are found by them


class DamagedRun(Exception):
    """A run folder that cannot be read; the message says why in one line."""


def run_kind(config: dict) -> str:
    """bsq, uniform (one fixed precision for every layer), hessian (a fixed precision per layer,
    chosen from Hessian traces) or float (pretraining only), from a config dict."""
    if config.get("bsq_epochs", 0) > 0:
        return "bsq"
    if config.get("finetune_epochs", 0) > 0:
        return "hessian" if config.get("layer_bits") else "uniform"
    return "float"


def run_name(config: BSQConfig, prefix: str) -> str:
    """prefix-float, prefix-a<alpha>, prefix-u<bits> or prefix-h<alpha> (the Hessian twin of the
    BSQ run of that alpha), by the run's kind: how sweeps name their runs."""
    kind = run_kind(config.to_dict())
    return f"{prefix}-" + {"float": "float", "bsq": f"a{config.alpha:g}", "uniform": f"u{config.nbits}",
                           "hessian": f"h{config.alpha:g}"}[kind]


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
    def config(self) -> BSQConfig:
        return BSQConfig.from_dict(self.info["config"])  # fills fields an older run.json lacks

    @property
    def summary(self) -> dict:
        return self.info.get("summary") or {}

    @property
    def kind(self) -> str:
        return run_kind(self.info["config"])

    def read_model(self) -> dict:
        """model.pt: the final integer model as export wrote it."""
        return read_torch(self.path / MODEL, f"{self.name} has no {MODEL} (it has not finished)")

    def read_float(self) -> dict | None:
        """float.pt, the float model's state_dict after pretraining, or None when the run has none."""
        return read_torch(self.path / FLOAT_MODEL, "") if (self.path / FLOAT_MODEL).exists() else None

    def read_traces(self) -> pd.DataFrame | None:
        """A Hessian twin's layer traces (store.TRACES: sensitivity.layer_traces of its float model),
        or None when the run has none."""
        path = self.path / TRACES
        if not path.exists():
            return None
        data = _read_regular(path, _MAX_BYTES["frame"])
        try:
            _check_footer(path.name, _footer(io.BytesIO(data)))
            frame = pd.read_parquet(io.BytesIO(data), columns=TRACE_COLUMNS)
        except DamagedRun:
            raise
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise _unreadable(path, err) from None
        _check_text(path.name, frame)
        return frame

    def final_layers(self) -> pd.DataFrame:
        """The layers frame at the run's last logged epoch (empty while it is float)."""
        layers = self.layers
        if layers.empty:
            return layers
        last = layers.iloc[-1]
        return layers[(layers.stage == last.stage) & (layers.epoch == last.epoch)].reset_index(drop=True)

    def frames(self) -> dict[str, pd.DataFrame]:
        return {kind: getattr(self, kind) for kind in FRAME_COLUMNS}


def read_torch(path: Path, missing: str):
    """torch.load onto the CPU with weights_only (no pickled code runs); a missing file is a
    FileNotFoundError saying `missing`, a bad one a DamagedRun."""
    import pickle

    import torch

    if not path.exists():
        raise FileNotFoundError(missing)
    data = _read_regular(path, _MAX_BYTES["torch"])
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message advises weights_only=False: never take it
        raise DamagedRun(f"{path.name} is unreadable: it holds objects other than tensors (refused, as loading "
                         "it could run code)") from None
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise _unreadable(path, err) from None


def _open_regular(path: Path, limit: int):
    """path opened for reading if it is a regular file of at most limit bytes, else a DamagedRun:
    a named pipe, a device or a folder in a run's place must neither hang nor flood a reader."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a pipe with no writer would block a plain open
    except FileNotFoundError:
        raise DamagedRun(f"{path.name} is missing") from None
    except OSError as err:
        raise DamagedRun(f"{path.name} cannot be opened ({err.strerror or err})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
        os.close(fd)
        raise DamagedRun(f"{path.name} is not a regular file" if not stat.S_ISREG(info.st_mode) else
                         f"{path.name} is {info.st_size} bytes, more than a run writes ({limit})")
    return os.fdopen(fd, "rb")


def _read_regular(path: Path, limit: int) -> bytes:
    """The bytes of _open_regular(path, limit), read from that one open (never torn by a rename)."""
    with _open_regular(path, limit) as file:
        data = file.read(limit + 1)
    if len(data) > limit:  # it grew while read
        raise DamagedRun(f"{path.name} is more than {limit} bytes")
    return data


def read_checkpoint(path: Path) -> dict:
    """checkpoint.pt of the run at path: config, stage, epochs done, model, optimizer and generator states."""
    return read_torch(Path(path) / CHECKPOINT, f"cannot resume {path}: it has no {CHECKPOINT}")


def _frame_path(folder: Path, kind: str, info: dict) -> Path | None:
    """The frame's file, or None when the run has not written it: a float run has no bit frames,
    and a run that has not finished (running, stopped or failed, say in float pretraining) may
    not have reached the epoch that writes it."""
    path = folder / frame_file(kind)
    if path.exists():
        return path
    if info["status"] != "finished" or (kind != "metrics" and run_kind(info["config"]) == "float"):
        return None  # not written yet (or never: a run stopped or failed before), or a float run's bit frames
    raise DamagedRun(f"{path.name} is missing")


def _check_columns(name: str, kind: str, columns: dict[str, bool]) -> None:
    """columns: each column's name and whether it holds numbers (ints or floats)."""
    missing = [c for c in FRAME_COLUMNS[kind] if c not in columns]
    if missing:
        raise DamagedRun(f"{name} lacks columns {', '.join(missing)}")
    wrong = [c for c in FRAME_COLUMNS[kind] if columns[c] == (c in _TEXT_COLUMNS)]
    if wrong:
        raise DamagedRun(f"{name} has columns of the wrong type: {', '.join(wrong)}")


def _unreadable(path: Path, err: Exception) -> DamagedRun:
    """The DamagedRun for a file that fails to parse, with the parser's first line."""
    return DamagedRun(f"{path.name} is unreadable ({type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]})")


def _read_frame(folder: Path, kind: str, info: dict) -> pd.DataFrame:
    path = _frame_path(folder, kind, info)
    if path is None:
        return pd.DataFrame(columns=FRAME_COLUMNS[kind])
    data = _read_regular(path, _MAX_BYTES["frame"])  # one read of one file: given a path, pyarrow takes
    try:                                             # its size and opens it apart, and a rename tears that
        _check_footer(path.name, _footer(io.BytesIO(data)))  # before decoding: a few KB can hold millions of rows
        frame = pd.read_parquet(io.BytesIO(data))
    except DamagedRun:
        raise
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise _unreadable(path, err) from None
    numeric = pd.api.types.is_numeric_dtype
    _check_columns(path.name, kind, {c: numeric(t) and not pd.api.types.is_bool_dtype(t)
                                     for c, t in frame.dtypes.items()})
    keys = _keys(kind)
    if not np.isfinite(frame[keys].to_numpy(float)).all():
        raise _bad_keys(path.name, keys)
    _check_text(path.name, frame)
    _check_rows(path.name, len(frame), info)
    return frame


def _check_text(name: str, frame: pd.DataFrame) -> None:
    """The text a frame holds is what the engine writes: a stage, a layer kind, a module path (the
    app and the figures show it, so it must not be markup)."""
    allowed = {"stage": lambda v: v in STAGES, "kind": lambda v: v in ("conv", "linear"),
               "layer": lambda v: isinstance(v, str) and _LAYER.fullmatch(v) is not None}
    for column, ok in allowed.items():
        if column in frame and not all(map(ok, frame[column].unique())):
            raise DamagedRun(f"{name} has a {column} that no run writes")


def _footer(file):
    import pyarrow.parquet as pq

    return pq.read_metadata(file)


def _check_footer(name: str, meta) -> None:
    """Refuse a frame that would decode to more rows or row groups than any run writes."""
    if meta.num_rows > _MAX_ROWS or meta.num_row_groups > _MAX_ROW_GROUPS:
        raise DamagedRun(f"{name} holds {meta.num_rows:,} rows in {meta.num_row_groups:,} row groups, more than a run "
                         f"writes ({_MAX_ROWS:,} rows, {_MAX_ROW_GROUPS} groups)")


def _keys(kind: str) -> list[str]:
    return [c for c in FRAME_COLUMNS[kind] if c in _KEY_COLUMNS]


def _bad_keys(name: str, keys: list[str]) -> DamagedRun:
    return DamagedRun(f"{name} has a missing or infinite {'/'.join(keys)}")


def _check_rows(name: str, rows: int, info: dict) -> None:
    if rows == 0 and info["status"] == "finished":
        raise DamagedRun(f"{name} has no rows although the run finished")


def check_frame(folder: Path, kind: str, info: dict) -> int:
    """Validate a frame from its footer alone (cheap, for listings); returns its row count."""
    import pyarrow as pa

    path = _frame_path(folder, kind, info)
    if path is None:
        return 0
    with _open_regular(path, _MAX_BYTES["frame"]) as file:  # one open, as in _read_frame
        try:
            meta = _footer(file)
            schema = meta.schema.to_arrow_schema()
        except Exception as err:
            raise _unreadable(path, err) from None
    _check_footer(path.name, meta)  # 50,000 row groups take seconds to walk below
    _check_columns(path.name, kind, {f.name: pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
                                     for f in schema})
    keys = _keys(kind)
    for group in (meta.row_group(i) for i in range(meta.num_row_groups)):
        for column in (group.column(j) for j in range(group.num_columns)):
            stats = column.statistics  # the footer's min, max and null count say as much as the data
            if column.path_in_schema in keys and stats is not None and (
                    stats.null_count or (stats.has_min_max and not math.isfinite(stats.min + stats.max))):
                raise _bad_keys(path.name, keys)
    _check_rows(path.name, meta.num_rows, info)
    return meta.num_rows


def read_info(folder: Path) -> dict:
    """run.json of the run at folder, every field checked (type and range); a DamagedRun says what is wrong."""
    try:
        info = json.loads(_read_regular(Path(folder) / INFO, _MAX_BYTES[INFO]))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:  # RecursionError: [[[[...]]]]
        raise DamagedRun(f"run.json is not valid JSON ({str(err)[:120]})") from None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict) or "status" not in info:
        raise DamagedRun("run.json lacks its config or status")
    if info["status"] not in _STATUSES:
        raise DamagedRun(f"run.json has an unknown status {str(info['status'])[:40]!r}")
    summary, provenance = info.get("summary") or {}, info.get("provenance") or {}
    if not isinstance(summary, dict) or not isinstance(provenance, dict):
        raise DamagedRun("run.json has a summary or provenance that is not a mapping")
    bad = [k for k in SUMMARY_KEYS if not (summary.get(k) is None or _is_number(summary[k]))]
    bad += [k for k in ("sweep", "error") if not isinstance(info.get(k), (str, type(None)))]
    pid = provenance.get("pid")
    if pid is not None and not (_is_number(pid) and isinstance(pid, int) and 0 < pid < 2**31):
        bad.append("provenance pid")
    if not isinstance(provenance.get("host"), (str, type(None))):
        bad.append("provenance host")
    if not (provenance.get("started") is None or _is_number(provenance["started"])):
        bad.append("provenance started")
    if bad:
        raise DamagedRun(f"run.json has a bad {', '.join(bad)}")
    info.update(summary=summary, provenance=provenance)  # null as {}: readers and writers update them
    try:
        BSQConfig.from_dict(info["config"])
    except (ValueError, TypeError) as err:
        raise DamagedRun(f"run.json has a bad config ({str(err).splitlines()[0][:120]})") from None
    return info


def _is_number(value) -> bool:
    """A finite int or float, not a bool (JSON's true would pass as 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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


