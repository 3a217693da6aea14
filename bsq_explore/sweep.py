"""Alpha sweeps: one shared float model, one BSQ run per alpha and uniform-precision baselines."""
from __future__ import annotations

import multiprocessing
import os
import shutil
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch

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


def _run_one(task) -> str | None:
    """Worker: train one run; returns None, or the one-line reason it failed."""
    config, root, name, sweep_name, resume, threads = task
    torch.set_num_threads(threads)
    try:
        train(config, runs=root, name=name, sweep=sweep_name, resume=resume, progress=False)
        return None
    except Exception as err:  # the run folder records the failure; the sweep goes on
        return f"{name}: {type(err).__name__}: {err}".splitlines()[0]


def sweep(preset_name: str, alphas, jobs: int = 1, runs: str | os.PathLike | None = None, name: str | None = None,
          uniform_bits=UNIFORM_BITS, progress: bool = True, **overrides) -> pd.DataFrame:
    """Train the float model once, then every alpha and every uniform baseline from it, jobs at a time.

    Runs are tagged with the sweep name; finished runs are kept, interrupted ones resume from
    their checkpoint, so calling sweep again completes a sweep. Returns the sweep table.
    """
    if jobs < 1:
        raise ValueError("jobs must be >= 1")
    alphas = sorted(float(a) for a in alphas)
    if not alphas or min(alphas) < 0:
        raise ValueError("give one or more alphas >= 0")
    config = preset(preset_name, **overrides)
    name = check_name(name or f"{preset_name}-sweep-{datetime.now():%Y%m%d-%H%M%S}")
    root = runs_root(runs)
    float_name = f"{name}-float"
    status = _needs_run(root / float_name)
    if status:
        train(config.replace(bsq_epochs=0, finetune_epochs=0), runs=root, name=float_name, sweep=name,
              resume=status == "resume", progress=progress)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    tasks = [(c, str(root), n, name, status == "resume", threads)
             for n, c in plan_sweep(config, name, alphas, uniform_bits, root / float_name / "float.pt")
             if (status := _needs_run(root / n))]
    if jobs == 1:
        errors = [_run_one(t) for t in tasks]
    else:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            errors = pool.map(_run_one, tasks, chunksize=1)
    table = sweep_table(list_runs(root), name)
    table.attrs["errors"] = [e for e in errors if e]
    return table
