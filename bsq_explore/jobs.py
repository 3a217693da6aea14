"""Run processes: launch and stop, the lock of one writer per run, and whether a run's process lives."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .config import BSQConfig
from .runs import DamagedRun, read_info
from .store import FILE_MODE, check_name

__all__ = ["process_alive", "is_stale", "check_idle", "owning", "lock_holders", "writer", "writers", "stop", "start",
           "Launch", "launch"]


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


def is_stale(info: dict) -> bool:
    """True for a run marked running whose process is gone: it was killed and can be resumed.

    Only a process on this host can be checked; a run from another host is never called stale.
    """
    return info.get("status") == "running" and process_alive(info) is False


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


def lock_holders() -> dict[tuple[int, int], int]:
    """(device, inode) of every file locked with flock on this host -> the pid holding it, from
    the kernel's own table (Linux /proc/locks); {} where there is none."""
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return {}
    held = {}
    for line in table.splitlines():
        parts = line.split()  # "1: FLOCK  ADVISORY  WRITE 2443 fe:00:5415828 0 EOF"; waiters have "->"
        if len(parts) >= 6 and parts[1] == "FLOCK":
            major, minor, inode = parts[5].split(":")
            held[(os.makedev(int(major, 16), int(minor, 16)), int(inode))] = int(parts[4])
    return held


def writer(path: Path) -> int | None:
    """The pid of the process holding the lock of the run at path (its one writer), or None."""
    try:
        lock = os.stat(_lock_file(path))
    except OSError:
        return None
    return lock_holders().get((lock.st_dev, lock.st_ino))


def writers(root: Path) -> dict[str, int]:
    """run name -> writer pid of every run under root that a process holds now (training, or
    loading its data before its folder exists)."""
    held, found = lock_holders(), {}
    for lock in Path(root).glob(".*.lock"):
        try:
            info = lock.stat()
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in held:
            found[lock.name[1:-len(".lock")]] = held[(info.st_dev, info.st_ino)]
    return found


def _is_train(command: list[str]) -> bool:
    """Whether a command line is `bsq-explore train` (the console script or python -m bsq_explore.cli)."""
    cli = next((i for i, arg in enumerate(command) if arg == "bsq_explore.cli" or Path(arg).name == "bsq-explore"), None)
    return cli is not None and "train" in command[cli + 1:cli + 2]


def stop(path: str | os.PathLike) -> None:
    """Ask the process training the run at path to stop: it marks the run stopped and keeps every
    finished epoch (resume() goes on). Only the run's provable writer is signalled: the process
    that holds its lock (by the kernel's lock table), started when run.json says, running
    `bsq-explore train`; a crafted run.json cannot point the signal at anything else."""
    import psutil

    path = Path(path)
    info = read_info(path)
    pid = (info.get("provenance") or {}).get("pid")
    if info["status"] != "running" or not process_alive(info):
        raise ValueError(f"run {path.name} is not running on this host")
    if writer(path) != pid:
        raise ValueError(f"process {pid} does not hold run {path.name}'s lock; not stopping it")
    try:
        command = psutil.Process(pid).cmdline()
    except psutil.Error:
        command = []
    if not _is_train(command):
        raise ValueError(f"process {pid} of run {path.name} is not a bsq-explore train; not stopping it")
    os.kill(pid, signal.SIGTERM)


def start(config: BSQConfig, root: Path, name: str, limit: int) -> Launch:
    """launch(), unless limit runs train already: the live `bsq-explore train` children of this
    process and the holders of run locks under root, both read from the system's process and lock
    tables (nothing a client can clear)."""
    import psutil

    children = {c.pid for c in psutil.Process().children() if _alive_train(c)}
    busy = set(writers(root).values()) | children
    if len(busy) >= limit:
        raise ValueError(f"{len(busy)} run(s) are training now, and at most {limit} may train at once "
                         "($BSQ_APP_RUNS): stop one below, or wait")
    return launch(config, root, name)


def _alive_train(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE and _is_train(process.cmdline())
    except psutil.Error:
        return False


@dataclass
class Launch:
    """A run started by launch(): its process, and a file that keeps the process's error output."""
    name: str
    process: subprocess.Popen
    log: typing.IO[bytes]

    def error(self) -> str | None:
        """The last line the process printed, once it has ended with an error (say, before its run
        folder existed: a dataset not on disk, a name in use); None while it runs or after success."""
        code = self.process.poll()
        if code in (None, 0):
            return None
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").replace("\r", "\n").splitlines()
        return next((line for line in reversed(lines) if line.strip()), f"it ended with exit code {code}")


def launch(config: BSQConfig, runs: str | os.PathLike, name: str) -> Launch:
    """Start `bsq-explore train` on config as a background process in its own session, so it
    outlives its caller (an app page can close without killing or corrupting the run). The
    config travels whole, as JSON on the process's stdin."""
    if (Path(runs) / check_name(name)).exists():
        raise FileExistsError(f"run {name} already exists in {runs}")
    args = [sys.executable, "-m", "bsq_explore.cli", "train", "--config", "-", "--runs", str(runs), "--name", name]
    log = tempfile.TemporaryFile()  # a file, not a pipe: nobody reads it while the run writes its progress
    process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log,
                               start_new_session=True)
    process.stdin.write(json.dumps(config.to_dict()).encode())
    process.stdin.close()
    return Launch(name, process, log)
