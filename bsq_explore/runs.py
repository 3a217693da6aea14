"""The run folder, both ways: its file names, writing it atomically epoch by epoch, reading and listing it."""
from __future__ import annotations

import io
import json
import math
import os
import platform
import re
import shutil
import socket
import stat
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .config import BSQConfig
from .stats import BIT_COLUMNS, LAYER_COLUMNS

INFO, CHECKPOINT, FLOAT_MODEL, MODEL = "run.json", "checkpoint.pt", "float.pt", "model.pt"
STATUSES = ("running", "finished", "failed", "stopped")  # stopped: by the user, resumable
METRIC_COLUMNS = ["stage", "epoch", "step", "train_loss", "reg_loss", "train_acc", "test_acc",
                  "avg_bits", "compression", "lr", "seconds"]
FRAME_COLUMNS = {
    "metrics": METRIC_COLUMNS,
    "bits": ["stage", "epoch", "step"] + BIT_COLUMNS,
    "layers": ["stage", "epoch", "step"] + LAYER_COLUMNS,
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}$")
MAX_BYTES = {INFO: 1 << 20, "frame": 1 << 30, "torch": 4 << 30}  # reads refuse bigger files (a /dev/zero link)
SUMMARY_KEYS = ("test_acc", "bsq_acc", "avg_bits", "compression")
TEXT_COLUMNS = {"stage", "layer", "kind"}  # every other frame column is a number
KEY_COLUMNS = {"step", "epoch", "bit"}  # numbers that must be finite: rows are found by them


def _file_mode() -> int:
    mask = os.umask(0)  # the only way to read it; set back at once, at import, before any thread
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()  # run files are as readable as any file the user makes (a shared runs root)


class DamagedRun(Exception):
    """A run folder that cannot be read; the message says why in one line."""


def run_name(config: BSQConfig, prefix: str) -> str:
    """prefix-float, prefix-a<alpha> or prefix-u<bits>, by the run's kind: how sweeps name their runs."""
    kind = run_kind(config.to_dict())
    return f"{prefix}-" + {"float": "float", "bsq": f"a{config.alpha:g}", "uniform": f"u{config.nbits}"}[kind]


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
    def config(self) -> BSQConfig:
        return BSQConfig.from_dict(self.info["config"])  # fills fields an older run.json lacks

    @property
    def summary(self) -> dict:
        return self.info.get("summary") or {}

    @property
    def kind(self) -> str:
        return run_kind(self.info["config"])

    @property
    def stale(self) -> bool:
        return is_stale(self.info)

    @property
    def caption(self) -> str:
        """'alpha 0.3: 96.7 % test accuracy, 2.75 bits (11.6x)' (a BSQ run; others say uniform
        3-bit or float), 'collapsed: no weight left' when nothing is left, else the status."""
        c = self.info["config"]
        what = (f"alpha {c['alpha']:g}" if self.kind == "bsq" else
                f"uniform {c['nbits']}-bit" if self.kind == "uniform" else "float")
        if self.summary.get("avg_bits") is None:
            return f"{what}: {self.info['status']}"
        text = describe(self.summary)
        size = "collapsed: no weight left" if self.summary["avg_bits"] == 0 else \
            f"{text['avg_bits']} bits ({text['compression']})"
        return f"{what}: {text['test_acc']} test accuracy, {size}"

    def read_model(self) -> dict:
        """model.pt: the final integer model as bsq.export wrote it."""
        return _read_torch(self.path / MODEL, f"{self.name} has no {MODEL} (it has not finished)")

    def read_float(self) -> dict | None:
        """float.pt, the float model's state_dict after pretraining, or None when the run has none."""
        return _read_torch(self.path / FLOAT_MODEL, "") if (self.path / FLOAT_MODEL).exists() else None

    def load_data(self):
        """The run's dataset, loaded as it trained on it."""
        from .data import load

        c = self.config
        return load(c.dataset, c.train_subset, c.test_subset)

    def load_model(self, data):
        """The run's final quantized model: model.pt loaded into its architecture (built for data)."""
        from .bsq import load_quantized
        from .models import build_model

        model = build_model(self.config, data)
        load_quantized(model, self.read_model())
        return model


def _read_torch(path: Path, missing: str):
    """torch.load onto the CPU with weights_only (no pickled code runs); a bad file is a DamagedRun."""
    import pickle

    import torch

    if not path.exists():
        raise FileNotFoundError(missing)
    data = read_regular(path, MAX_BYTES["torch"])
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message advises weights_only=False: never take it
        raise DamagedRun(f"{path.name} is unreadable: it holds objects other than tensors (refused, as loading "
                         "it could run code)") from None
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise unreadable(path, err) from None


def open_regular(path: Path, limit: int):
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


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of open_regular(path, limit), read from that one open (never torn by a rename)."""
    with open_regular(path, limit) as file:
        data = file.read(limit + 1)
    if len(data) > limit:  # it grew while read
        raise DamagedRun(f"{path.name} is more than {limit} bytes")
    return data


def read_checkpoint(path: Path) -> dict:
    """checkpoint.pt of the run at path: config, stage, epochs done, model, optimizer and generator states."""
    return _read_torch(Path(path) / CHECKPOINT, f"cannot resume {path}: it has no {CHECKPOINT}")


def process_alive(info: dict) -> bool | None:
    """Whether the process that wrote the run still exists; None when that cannot be told (another
    host). A zombie (killed, not yet reaped by its parent, say the app) is gone, and so is the
    writer whose pid now names a process started at another time (a reused pid)."""
    import psutil

    provenance = info.get("provenance") or {}
    pid, started = provenance.get("pid"), provenance.get("started")
    if provenance.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) < 1  # runs before 'started': trust the pid
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # it exists, owned by someone else
        return True


def process_command(info: dict) -> str:
    """The command line of the run's process ('' when it cannot be read), to tell a bsq-explore run."""
    import psutil

    try:
        return " ".join(psutil.Process(info["provenance"]["pid"]).cmdline())
    except (psutil.Error, KeyError, TypeError, ValueError):
        return ""


def is_stale(info: dict) -> bool:
    """True for a run marked running whose process is gone: it was killed and can be resumed.

    Only a process on this host can be checked; a run from another host is never called stale.
    """
    return info.get("status") == "running" and process_alive(info) is False


def _frame_path(folder: Path, kind: str, info: dict) -> Path | None:
    """The frame's file, or None when the run has not written it: a float run has no bit frames,
    and a run that has not finished (running, stopped or failed, say in float pretraining) may
    not have reached the epoch that writes it."""
    path = folder / _frame_file(kind)
    if path.exists():
        return path
    if info["status"] != "finished" or (kind != "metrics" and run_kind(info["config"]) == "float"):
        return None  # not written yet (or never: a run stopped or failed before), or a float run's bit frames
    raise DamagedRun(f"{path.name} is missing")


def _frame_file(kind: str) -> str:
    return f"{kind}.parquet"


def _check_columns(name: str, kind: str, columns: dict[str, bool]) -> None:
    """columns: each column's name and whether it holds numbers (ints or floats)."""
    missing = [c for c in FRAME_COLUMNS[kind] if c not in columns]
    if missing:
        raise DamagedRun(f"{name} lacks columns {', '.join(missing)}")
    wrong = [c for c in FRAME_COLUMNS[kind] if columns[c] == (c in TEXT_COLUMNS)]
    if wrong:
        raise DamagedRun(f"{name} has columns of the wrong type: {', '.join(wrong)}")


def unreadable(path: Path, err: Exception) -> DamagedRun:
    """The DamagedRun for a file that fails to parse, with the parser's first line."""
    return DamagedRun(f"{path.name} is unreadable ({type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]})")


def _read_frame(folder: Path, kind: str, info: dict) -> pd.DataFrame:
    path = _frame_path(folder, kind, info)
    if path is None:
        return pd.DataFrame(columns=FRAME_COLUMNS[kind])
    data = read_regular(path, MAX_BYTES["frame"])  # one read of one file: given a path, pyarrow takes
    try:                                             # its size and opens it apart, and a rename tears that
        frame = pd.read_parquet(io.BytesIO(data))
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise unreadable(path, err) from None
    numeric = pd.api.types.is_numeric_dtype
    _check_columns(path.name, kind, {c: numeric(t) and not pd.api.types.is_bool_dtype(t)
                                     for c, t in frame.dtypes.items()})
    keys = _keys(kind)
    if not np.isfinite(frame[keys].to_numpy(float)).all():
        raise _bad_keys(path.name, keys)
    _check_rows(path.name, len(frame), info)
    return frame


def _keys(kind: str) -> list[str]:
    return [c for c in FRAME_COLUMNS[kind] if c in KEY_COLUMNS]


def _bad_keys(name: str, keys: list[str]) -> DamagedRun:
    return DamagedRun(f"{name} has a missing or infinite {'/'.join(keys)}")


def _check_rows(name: str, rows: int, info: dict) -> None:
    if rows == 0 and info["status"] == "finished":
        raise DamagedRun(f"{name} has no rows although the run finished")


def _check_frame(folder: Path, kind: str, info: dict) -> int:
    """Validate a frame from its footer alone (cheap, for listings); returns its row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _frame_path(folder, kind, info)
    if path is None:
        return 0
    with open_regular(path, MAX_BYTES["frame"]) as file:  # one open, as in _read_frame
        try:
            meta = pq.read_metadata(file)
            schema = meta.schema.to_arrow_schema()
        except Exception as err:
            raise unreadable(path, err) from None
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
        info = json.loads(read_regular(Path(folder) / INFO, MAX_BYTES[INFO]))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:  # RecursionError: [[[[...]]]]
        raise DamagedRun(f"run.json is not valid JSON ({str(err)[:120]})") from None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict) or "status" not in info:
        raise DamagedRun("run.json lacks its config or status")
    if info["status"] not in STATUSES:
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


LIST_COLUMNS = ["name", "status", "sweep", "kind", "alpha", "nbits", "test_acc", "bsq_acc", "avg_bits",
                "compression", "epochs", "reason", "path"]


def run_kind(config: dict) -> str:
    """bsq, uniform (a fixed-precision baseline) or float (pretraining only), from a config dict."""
    if config.get("bsq_epochs", 0) > 0:
        return "bsq"
    return "uniform" if config.get("finetune_epochs", 0) > 0 else "float"


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
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        try:
            entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
        except OSError:  # unreadable root: nothing to list
            continue
        for folder in (p for p in entries if _holds_a_run(p)):
            row = dict(name=folder.name, path=str(folder), reason="")
            try:
                if not folder.is_dir():
                    raise DamagedRun("a symlink that loops or points nowhere")
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
                elif info["status"] == "stopped":
                    row["reason"] = "stopped before it finished; resume it to go on"
                elif is_stale(info):
                    row.update(status="running (stale)",
                               reason=f"process {info['provenance']['pid']} is gone; resume it to go on")
            except DamagedRun as err:
                row.update(status="damaged", reason=str(err))
            except OSError as err:  # say a folder without read permission
                row.update(status="damaged", reason=f"cannot be read ({err.strerror or err})")
            rows.append(row)
    return pd.DataFrame(rows, columns=LIST_COLUMNS)


def sweep_table(runs: pd.DataFrame, sweep: str) -> pd.DataFrame:
    """The sweep's runs from a list_runs() frame, BSQ runs by alpha then baselines by bits."""
    table = runs[runs.sweep == sweep].copy()
    table["order"] = table.kind.map({"float": 0, "bsq": 1, "uniform": 2})
    table = table.sort_values(["order", "alpha", "nbits"]).drop(columns="order")
    return table[["name", "kind", "alpha", "nbits", "avg_bits", "compression", "bsq_acc", "test_acc",
                  "status", "reason"]].reset_index(drop=True)


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
                 for p in (folder / INFO, folder / _frame_file("metrics"), folder / _frame_file("bits")))


# --- the summary: written once at the end, shown by the CLI, the app and the notebooks ----------

def summarize(metrics: pd.DataFrame) -> dict:
    """The summary of a finished run: the last epoch's test_acc, avg_bits and compression, and
    bsq_acc, the test accuracy at the end of BSQ (before finetuning)."""
    bsq = metrics[metrics.stage == "bsq"]
    last = metrics.iloc[-1] if len(metrics) else None
    value = (lambda key: float(last[key]) if last is not None else None)
    return dict(test_acc=value("test_acc"), bsq_acc=float(bsq.test_acc.iloc[-1]) if len(bsq) else None,
                avg_bits=value("avg_bits"), compression=value("compression"))


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


# --- writing ----------------------------------------------------------------------------------

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
    import torch

    import psutil

    return dict(host=socket.gethostname(), pid=os.getpid(), started=psutil.Process().create_time(),
                threads=torch.get_num_threads())


def check_idle(path: Path, force: bool = False) -> None:
    """Refuse to resume or overwrite a run marked running whose process may still write it: alive
    on this host, or on another host (which this one cannot check) unless force."""
    try:
        info = read_info(path)
    except DamagedRun:
        return
    provenance = info.get("provenance") or {}
    pid, host = provenance.get("pid"), provenance.get("host")
    if info["status"] != "running" or (pid == os.getpid() and host == socket.gethostname()):
        return
    alive = process_alive(info)
    if alive:
        raise FileExistsError(f"run {path.name} is still running (process {pid}); stop it first")
    if alive is None and not force:
        raise FileExistsError(f"run {path.name} is marked running by process {pid} on host {host}, which this "
                              "host cannot check; if that process is gone, pass --force")


def _lock_file(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"  # beside the folder: it outlives a folder's replacement


@contextmanager
def owning(path: Path):
    """Own the run folder at path while the block runs: an exclusive lock that ends with the
    process however it ends. Another process owning it is a FileExistsError naming it."""
    import fcntl

    lock = _lock_file(path)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise FileExistsError(f"run {path.name} is in use by {owner}; stop it first") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on host {socket.gethostname()}".encode(), 0)
        yield
    finally:
        if not path.exists():  # nothing was made (bad input): leave no lock file behind either
            lock.unlink(missing_ok=True)
        os.close(fd)  # releases the lock


RUN_FILES = (INFO, CHECKPOINT, FLOAT_MODEL, MODEL, *(_frame_file(k) for k in FRAME_COLUMNS))


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
    def create(cls, path: Path, config: BSQConfig, device: str, sweep: str | None = None) -> "RunFolder":
        """A new run at path (its parent must exist), status running; replaces the files of a run of
        that name, and keeps any other file in its folder."""
        import torch

        made = not path.is_dir()
        if made:
            path.mkdir()
        else:
            _clear(path)
        info = dict(config=config.to_dict(), sweep=sweep, status="running", error=None, summary={},
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
    def reopen(cls, path: Path, kept: list[tuple]) -> "RunFolder":
        """Continue a run: keep the rows of the checkpointed (stage, epoch, ...) entries; a later,
        unsaved epoch is re-run."""
        for tmp in path.glob(".*.tmp"):  # half-written files of a killed process
            tmp.unlink(missing_ok=True)
        run = load_run(path)
        keys = {(stage, epoch) for stage, epoch, *_ in kept}
        frames = {}
        for k in FRAME_COLUMNS:
            frame = getattr(run, k)
            mask = [key in keys for key in zip(frame.stage, frame.epoch)]
            frames[k] = frame[mask].reset_index(drop=True)
        run.info.update(status="running", error=None)
        run.info["provenance"].update(end=None, **_this_process())
        folder = cls(path, run.info, frames)
        folder._write_info()
        return folder

    def _write_info(self) -> None:
        write_json(self.path / INFO, self.info)

    def append(self, key: str, rows: pd.DataFrame) -> None:
        """Add an epoch's rows to a frame and rewrite its file."""
        old = self.frames[key]
        self.frames[key] = rows if old.empty else pd.concat([old, rows], ignore_index=True)
        write_frame(self.path / _frame_file(key), self.frames[key])

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
        self._end("finished", None, summarize(self.frames["metrics"]))

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
