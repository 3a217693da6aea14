"""Alpha sweeps: one shared float model, one BSQ run per alpha and uniform-precision baselines."""
from __future__ import annotations

import multiprocessing
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from .config import BSQConfig, preset
from .runs import check_name, list_runs, read_info, runs_root, sweep_table
from .train import train

UNIFORM_BITS = (2, 3, 4, 8)


def plan_sweep(config: BSQConfig, name: str, alphas, uniform_bits, pretrained: Path) -> list[tuple[str, BSQConfig]]:
    """(run name, config) of every run after the float one; all start from its weights."""
    start = dict(pretrain_epochs=0, pretrained=str(pretrained))
    runs = [(f"{name}-a{alpha:g}", config.replace(alpha=float(alpha), **start)) for alpha in alphas]
    runs += [(f"{name}-u{bits}", config.replace(nbits=bits, max_bits=max(bits, config.max_bits), bsq_epochs=0,
                                                 **start)) for bits in uniform_bits]
    return runs


def _needs_run(path: Path) -> bool | str:
    """False if finished; 'resume' if it has a checkpoint; True to start afresh (a folder with
    no finished epoch is cleared first)."""
    if not path.exists():
        return True
    try:
        if read_info(path)["status"] == "finished":
            return False
    except Exception:
        pass
    if (path / "checkpoint.pt").exists():
        return "resume"
    shutil.rmtree(path)
    return True


class Task(NamedTuple):
    """One run of a sweep, as a worker process or Ray task receives it."""
    config: BSQConfig
    root: str
    name: str
    sweep: str
    resume: bool
    progress: bool = False


def _run_one(task: Task) -> str | None:
    """Worker: train one run; returns None, or the one-line reason it failed. The run sets its own
    thread count from its config, so how it was scheduled never changes its frames."""
    try:
        train(task.config, runs=task.root, name=task.name, sweep=task.sweep, resume=task.resume,
              progress=task.progress)
        return None
    except Exception as err:  # the run folder records the failure; the sweep goes on
        return f"{task.name}: {type(err).__name__}: {err}".splitlines()[0]


def run_local(tasks: list, jobs: int = 1) -> list[str | None]:
    """Each task in a process of this machine, jobs at a time (in this process when jobs is 1)."""
    if jobs == 1 or len(tasks) == 1:
        return [_run_one(t) for t in tasks]
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        return pool.map(_run_one, tasks, chunksize=1)


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
          cpus_per_trial: int = 1, gpus_per_trial: float = 0, **overrides) -> pd.DataFrame:
    """Train the float model once, then every alpha and every uniform baseline from it.

    backend 'local' runs jobs processes on this machine; 'ray' makes every run a Ray task
    asking for cpus_per_trial CPUs and gpus_per_trial GPUs on the cluster at address. Runs are
    tagged with the sweep name; finished runs are kept, failed or killed ones resume from their
    checkpoint, so calling sweep again completes a sweep. Returns the sweep table.
    """
    if jobs < 1 or cpus_per_trial < 1 or gpus_per_trial < 0:
        raise ValueError("jobs and cpus_per_trial must be >= 1, gpus_per_trial >= 0")
    if backend not in ("local", "ray"):
        raise ValueError(f"unknown backend {backend!r}; choose local or ray")
    alphas = sorted(float(a) for a in alphas)
    if not alphas or min(alphas) < 0:
        raise ValueError("give one or more alphas >= 0")
    config = preset(preset_name, **overrides)
    for alpha in alphas:  # every config must be valid before the float model spends its time
        config.replace(alpha=alpha)
    name = check_name(name or f"{preset_name}-sweep-{datetime.now():%Y%m%d-%H%M%S}")
    root = runs_root(runs)
    execute = ((lambda tasks: run_local(tasks, jobs)) if backend == "local" else
               (lambda tasks: run_ray(tasks, address, cpus_per_trial, gpus_per_trial)))

    float_name = f"{name}-float"
    status = _needs_run(root / float_name)
    if status:
        error, = execute([Task(config.replace(bsq_epochs=0, finetune_epochs=0), str(root), float_name, name,
                               status == "resume", progress and backend == "local")])
        if error:
            raise RuntimeError(f"the shared float model failed, so no alpha can start: {error}")
    tasks = [Task(c, str(root), n, name, status == "resume")
             for n, c in plan_sweep(config, name, alphas, uniform_bits, root / float_name / "float.pt")
             if (status := _needs_run(root / n))]
    errors = execute(tasks) if tasks else []
    table = sweep_table(list_runs(root), name)
    table.attrs["errors"] = [e for e in errors if e]
    return table
