"""Alpha sweeps: one shared float model, one BSQ run per alpha, uniform-precision baselines and Hessian twins."""
from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from .catalog import finished_bsq, list_runs, sweep_table
from .config import UNIFORM_BITS, BSQConfig, differences, preset
from .paths import runs_root
from .progress import ProgressBar
from .runs import DamagedRun, load_run, read_info, read_torch, run_name
from .store import FLOAT_MODEL, TRACES, check_name, prepare_root, write_frame
from .train import RunFailed, resume, train

__all__ = ["plan_sweep", "TRACE_IMAGES", "hessian_twins", "run_ray", "sweep"]


def plan_sweep(config: BSQConfig, alphas, uniform_bits, pretrained: Path, equal_compute: bool = False) -> list[BSQConfig]:
    """The config of every run after the float one; all start from its weights. A uniform baseline
    finetunes for the BSQ runs' finetune epochs, or with equal_compute for their BSQ and finetune
    epochs together (the same number of optimizer steps as a BSQ run)."""
    start = dict(pretrain_epochs=0, pretrained=str(pretrained))
    budget = config.finetune_epochs + (config.bsq_epochs if equal_compute else 0)
    return ([config.replace(alpha=float(alpha), **start) for alpha in alphas] +
            [config.replace(nbits=bits, max_bits=max(bits, config.max_bits), bsq_epochs=0, finetune_epochs=budget,
                            **start)
             for bits in uniform_bits])


TRACE_IMAGES = 512  # training images the Hessian traces are measured on: a fixed, seeded choice


def hessian_twins(config: BSQConfig, table: pd.DataFrame, float_model: Path, samples: int,
                  equal_compute: bool = False, traces: pd.DataFrame | None = None) -> tuple[list[BSQConfig], pd.DataFrame]:
    """A Hessian twin for every finished BSQ run of a sweep table: the float model's layer traces
    (sensitivity.layer_traces on TRACE_IMAGES training images, `samples` Hutchinson samples), then
    the bits per layer that minimise the HAWQ objective at the BSQ run's average bits
    (sensitivity.allocate_bits, each layer 1 to nbits bits, as BSQ starts), finetuned as the
    sweep's uniform baselines are. A BSQ run below 1 average bit (collapsed) has no twin: the
    allocation gives every layer at least 1 bit. traces: the float model's traces measured before
    (by an earlier call: a finished twin keeps them), not measured again.

    Returns:
        The twins' configs (alpha: their BSQ run's) and the traces frame.
    """
    import torch

    from .data import load_for, load_for_model
    from .models import build_model, convert_filter
    from .sensitivity import allocate_bits, layer_traces

    try:  # the float run's record of its data's shape and classes: with traces kept, no image is read
        record = read_info(float_model.parent).get("data")
    except DamagedRun:
        record = None
    model = build_model(config, load_for_model(config, record))
    model.load_state_dict(read_torch(float_model, f"the sweep's float model {float_model} is missing"))
    if traces is None:
        data = load_for(config)
        keep = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(config.seed))[:TRACE_IMAGES]
        traces = layer_traces(model, data.train_x[keep], data.train_y[keep], samples, config.batch_size,
                              convert_filter(config), config.seed)
    epochs = config.finetune_epochs + (config.bsq_epochs if equal_compute else 0)
    twins = []
    for row in finished_bsq(table).itertuples():
        if row.avg_bits >= 1:
            bits = allocate_bits(traces, model, row.avg_bits, choices=range(1, config.nbits + 1))  # as BSQ starts
            twins.append(config.replace(alpha=float(row.alpha), pretrain_epochs=0, bsq_epochs=0, finetune_epochs=epochs,
                                        pretrained=str(float_model), layer_bits=",".join(f"{k}={b}" for k, b in bits.items())))
    return twins, traces


def _state(path: Path, sweep: str) -> str:
    """new (absent or empty), finished, resumable (this sweep's run, not finished: resume goes on
    from its checkpoint, or starts it afresh without one), or else why the sweep leaves it alone:
    it never deletes a folder it did not make."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return "new"
    try:
        info = read_info(path)
    except DamagedRun as err:
        return f"skipped {path.name}: {err}; move it away to rerun it"
    if info.get("sweep") != sweep:
        return f"skipped {path.name}: it is not a run of sweep {sweep}; move it away or pick another --name"
    return "finished" if info["status"] == "finished" else "resumable"


class _Task(NamedTuple):
    """One run of a sweep, as a worker process or Ray task receives it."""
    config: BSQConfig
    root: str
    name: str
    sweep: str
    resume: bool
    progress: bool = False


def _run_one(task: _Task) -> str | None:
    """Worker: train (or resume) one run; returns None, or the one-line reason it failed. The run
    sets its own thread count from its config, so how it was scheduled never changes its frames."""
    path = Path(task.root) / task.name
    with closing(ProgressBar(task.name)) as bar:
        callbacks = [bar] if task.progress else []
        try:
            if task.resume:
                resume(path, task.config, callbacks=callbacks)
            else:  # an empty folder (a run killed before it wrote anything) is taken over
                train(task.config, runs=task.root, name=task.name, sweep=task.sweep, callbacks=callbacks,
                      overwrite=True)
            return None
        except RunFailed as err:  # the run folder records the failure; the sweep goes on
            return f"{task.name}: {err.__cause__.__class__.__name__}: {err.__cause__}".splitlines()[0]
        except Exception as err:
            return f"{task.name}: {type(err).__name__}: {err}".splitlines()[0]


_busy = False  # whether this pool worker is inside a run


def _start_worker() -> None:
    """Pool worker setup: Ctrl-C is the parent's to handle (it ends the pool), SIGTERM stops the
    worker's run as Ctrl-C would (marked stopped, resumable), and on Linux the kernel sends SIGTERM
    when the sweep's process dies, even by SIGKILL: no orphan trains on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before the call
            sys.exit(0)


def _interrupt(signum, frame):
    if _busy:
        raise KeyboardInterrupt  # train() marks the run stopped; _work then ends the worker
    os._exit(0)  # an idle or exiting worker holds nothing to save: end now, not in the middle of atexit


def _work(task: _Task) -> str | None:
    """_run_one in a pool worker; a SIGTERM stops the run and ends the worker (no next task, no traceback)."""
    global _busy
    _busy = True
    try:
        return _run_one(task)
    except KeyboardInterrupt:  # the run is marked stopped and its files are on disk
        os._exit(0)
    finally:
        _busy = False


def _check_same_configs(root: Path, sweep: str, configs: list[BSQConfig]) -> None:
    """A sweep run again under its name must plan the runs it has: one table, one schedule."""
    for config in configs:
        path = root / run_name(config, sweep)
        try:
            info = read_info(path)
        except (DamagedRun, OSError):  # absent, or damaged: _state says what happens to it
            continue
        saved = BSQConfig.from_dict(info["config"])
        if info.get("sweep") == sweep and saved != config:
            raise ValueError(f"sweep {sweep} already has {path.name} with another config: "
                             f"{', '.join(differences(saved, config))}; give this sweep another --name")


def _check_names(configs: list[BSQConfig], sweep: str) -> None:
    """Every run of the sweep gets a valid name of its own."""
    names = [check_name(run_name(c, sweep)) for c in configs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"two runs of the sweep would share the name {clash[0]}: give each alpha and bit width once "
                         "(alphas equal to 6 significant digits share a name)")


def _run_local(tasks: list, jobs: int = 1) -> list[str | None]:
    """Each task in a process of this machine, jobs at a time (in this process when jobs is 1)."""
    if jobs == 1 or len(tasks) == 1:
        return [_run_one(t) for t in tasks]
    pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_start_worker)
    try:
        results = pool.map(_work, tasks, chunksize=1)
    except BaseException:  # Ctrl-C or a lost worker: stop the runs (each marked stopped, resumable)
        pool.terminate()
        raise
    # done: idle workers leave on their own. terminate() (what `with Pool` does) could hang here: its
    # SIGTERM may land on a worker's BLAS thread, leaving the main one waiting on the task queue's lock
    pool.close()
    pool.join()
    return results


def run_ray(tasks: list, address: str | None = None, cpus_per_trial: int = 1, gpus_per_trial: float = 0) -> list[str | None]:
    """Each task a Ray task with its own CPU/GPU request, on the cluster at address (or the Ray
    instance this process already joined, or a new local one). Workers must reach the runs root."""
    try:
        import ray
    except ImportError:
        raise ValueError("the ray backend needs Ray: pip install 'bsq_explore[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial)(_run_one)
    return ray.get([remote.remote(t) for t in tasks])


def sweep(preset_name: str, alphas, jobs: int = 1, runs: str | os.PathLike | None = None, name: str | None = None,
          uniform_bits=UNIFORM_BITS, progress: bool = True, backend: str = "local", address: str | None = None,
          cpus_per_trial: int = 1, gpus_per_trial: float = 0, equal_compute: bool = False,
          hessian: int = 0, **overrides) -> pd.DataFrame:
    """Train the float model once, then every alpha and every uniform baseline from it.

    Runs are tagged with the sweep name; finished runs are kept, failed or killed ones resume from
    their checkpoint, so calling sweep again completes a sweep (and adds any new alpha).

    Args:
        preset_name: the config of every run (config.PRESETS), with **overrides of its fields.
        alphas: one BSQ run each.
        jobs: runs side by side (local backend), each with the config's threads.
        runs: the runs root (default $BSQ_RUNS, else data/runs of this checkout).
        name: the sweep's name, the prefix of its runs (default: preset and time).
        uniform_bits: a uniform baseline per bit width.
        progress: a progress bar for the float model.
        backend: 'local' (processes here) or 'ray' (a Ray task per run, on the cluster at address,
            each asking for cpus_per_trial CPUs and gpus_per_trial GPUs).
        equal_compute: baselines finetune for the BSQ and finetune epochs together, as many steps as
            a BSQ run takes; else for the finetune epochs only.
        hessian: when > 0, then add a Hessian twin of every finished BSQ run (hessian_twins, with
            this many Hutchinson samples), finetuned as the baselines are.

    Returns:
        The sweep table (catalog.sweep_table); its attrs["errors"] lists the runs that failed.

    Example:
        >>> sweep("digits-mlp", [0, 0.1, 0.3], jobs=2, name="digits")
    """
    if jobs < 1 or cpus_per_trial < 1 or gpus_per_trial < 0 or hessian < 0:
        raise ValueError("jobs and cpus_per_trial must be >= 1, gpus_per_trial and hessian samples >= 0")
    if backend not in ("local", "ray"):
        raise ValueError(f"unknown backend {backend!r}; choose local or ray")
    alphas = sorted(float(a) for a in alphas)
    if not alphas or min(alphas) < 0:
        raise ValueError("give one or more alphas >= 0")
    config = preset(preset_name, **overrides)
    name = check_name(name or f"{preset_name}-sweep-{datetime.now():%Y%m%d-%H%M%S}")
    root = prepare_root(runs_root(runs))  # an unwritable root is bad input, refused before any run
    float_config = config.replace(bsq_epochs=0, finetune_epochs=0)
    float_name = run_name(float_config, name)
    # every config and run name must be valid, and each run its own, before the float model spends its time
    later = plan_sweep(config, alphas, uniform_bits, root / float_name / FLOAT_MODEL, equal_compute)
    _check_names([float_config, *later], name)
    _check_same_configs(root, name, [float_config, *later])
    execute = ((lambda tasks: _run_local(tasks, jobs)) if backend == "local" else
               (lambda tasks: run_ray(tasks, address, cpus_per_trial, gpus_per_trial)))

    state = _state(root / float_name, name)
    if state.startswith("skipped"):
        raise FileExistsError(f"the shared float model's folder is in the way: {state}")
    if state != "finished":
        error, = execute([_Task(float_config, str(root), float_name, name, state == "resumable",
                               progress and backend == "local")])
        if error:
            raise RuntimeError(f"the shared float model failed, so no alpha can start: {error}")
    errors = _run_all(later, root, name, execute)
    if hessian:
        errors += _run_twins(config, root, name, root / float_name / FLOAT_MODEL, hessian, equal_compute, execute)
    table = sweep_table(list_runs(root), name)
    table.attrs["errors"] = [e for e in errors if e]
    return table


def _run_twins(config: BSQConfig, root: Path, name: str, float_model: Path, samples: int, equal_compute: bool,
               execute) -> list[str | None]:
    """hessian_twins of the sweep's finished BSQ runs, trained, each with the traces in its folder."""
    table = sweep_table(list_runs(root), name)
    if finished_bsq(table).empty:  # said with the sweep's other errors: its table still comes back
        return [f"no Hessian twin: sweep {name} has no finished BSQ run"]
    kept = _read_kept_traces(root, table, float_model, samples)
    twins, traces = hessian_twins(config, table, float_model, samples, equal_compute, kept)
    _check_names(twins, name)
    _check_same_configs(root, name, twins)
    folders = [root / run_name(t, name) for t in twins]
    _keep_traces(folders, traces, name)  # twins that finished in a sweep killed before it wrote their traces
    errors = _run_all(twins, root, name, execute)
    _keep_traces(folders, traces, name)
    return errors


def _keep_traces(folders: list[Path], traces: pd.DataFrame, sweep: str) -> None:
    """The traces, written into each finished twin of folders that has none: after its run, since
    starting a run clears its folder (traces among its files), and never over a twin's own."""
    for path in folders:
        if _state(path, sweep) == "finished" and not (path / TRACES).exists():
            write_frame(path / TRACES, traces)


def _read_kept_traces(root: Path, table: pd.DataFrame, float_model: Path, samples: int) -> pd.DataFrame | None:
    """The float model's traces that a finished twin of the sweep keeps, measured with `samples`
    samples after the float model was last written: a rerun of the sweep need not measure them again
    (minutes on a ResNet-20). None when no twin keeps such traces, readable and finite."""
    for run in table[(table.kind == "hessian") & (table.status == "finished")].name:
        try:
            if (root / run / TRACES).stat().st_mtime < float_model.stat().st_mtime:
                continue  # measured on an older float model
            traces = load_run(root / run).read_traces()
        except (OSError, DamagedRun):
            continue
        if traces is not None and len(traces) and (traces.samples == samples).all() and traces.trace.map(
                math.isfinite).all():
            return traces
    return None


def _run_all(configs: list[BSQConfig], root: Path, name: str, execute) -> list[str | None]:
    """Train (or resume) the runs of configs the sweep has not finished; their errors, and why it left any alone."""
    states = {run_name(c, name): (c, _state(root / run_name(c, name), name)) for c in configs}
    tasks = [_Task(c, str(root), run, name, state == "resumable") for run, (c, state) in states.items()
             if state in ("new", "resumable")]
    errors = [state for _, state in states.values() if state.startswith("skipped")]
    return errors + (execute(tasks) if tasks else [])
