"""The staged run: float pretraining -> convert -> BSQ with re-quantization -> finetune -> export.

Every epoch appends to the run folder's frames (atomically) and emits an Event to callbacks.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import typing
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import data
from .bsq import bit_lasso, bit_weights, clamp_bits_, export, freeze_, requantize_
from .config import TORCHVISION, BSQConfig
from .layers import convert_, weights_up_front
from .models import build_model, check_model, convert_filter
from .paths import runs_root
from .runs import (CHECKPOINT, FRAME_COLUMNS, RunFolder, check_idle, check_name, owning, prepare_root,
                   process_alive, process_command, read_checkpoint, read_info, run_name)
from .stats import FLOAT_BITS, bit_sparsity, layer_precision, size_of


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


class RunFailed(RuntimeError):
    """A run stopped by an error after it began; its folder keeps every finished epoch and the reason."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"run {path} failed: {reason}")
        self.path = path


# --- the stages, as data ----------------------------------------------------------------------

def _convert(model: nn.Module, config: BSQConfig) -> None:
    convert_(model, config.nbits, filter_fn=convert_filter(config))


def _freeze(model: nn.Module, config: BSQConfig) -> None:
    freeze_(model)


class Stage(NamedTuple):
    """One stage of a run; its epochs, lr and milestones are the config fields named after it."""
    name: str
    enter: Callable[[nn.Module, BSQConfig], None] | None  # what entering it does to the model
    snapshot: bool  # it logs an epoch 0 on entry: the model as converted, re-quantized, untrained


STAGES = (Stage("pretrain", None, False), Stage("bsq", _convert, True), Stage("finetune", _freeze, False))
_NAMES = [s.name for s in STAGES]


def enter_(model: nn.Module, config: BSQConfig, stage: str, after: str | None = None) -> nn.Module:
    """Give model the structure of `stage` by replaying the entry steps of every stage after
    `after` up to it: a stage that was skipped (a uniform baseline has no BSQ epochs) still
    converts, and a resumed model starts from the float architecture (after=None)."""
    first = _NAMES.index(after) + 1 if after else 0
    for s in STAGES[first:_NAMES.index(stage) + 1]:
        if s.enter is not None:
            s.enter(model, config)
    return model


class Epoch(NamedTuple):
    stage: str
    epoch: int  # within the stage; 0 is a snapshot stage's entry
    step: int   # epochs trained since the run began (a snapshot trains none: it shares its step)


def plan(config: BSQConfig) -> list[Epoch]:
    """Every epoch of a run in order; a stage with 0 epochs is skipped."""
    epochs, step = [], 0
    for s in STAGES:
        count = getattr(config, f"{s.name}_epochs")
        for epoch in range(0 if s.snapshot and count else 1, count + 1):
            step += epoch > 0
            epochs.append(Epoch(s.name, epoch, step))
    return epochs


def stage_lr(config: BSQConfig, stage: str, epoch: int) -> float:
    """The lr of an epoch of a stage: step (x lr_gamma after each milestone) or a half cosine from
    the stage's lr (epoch 1) towards 0 (its last epoch keeps a small step)."""
    base, milestones = getattr(config, f"{stage}_lr"), getattr(config, f"{stage}_milestones")
    if config.lr_schedule == "cosine":
        epochs = getattr(config, f"{stage}_epochs")
        return base * 0.5 * (1 + math.cos(math.pi * (min(max(epoch, 1), epochs) - 1) / max(epochs, 1)))
    return base * config.lr_gamma ** sum(epoch > m for m in milestones)


COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # config.precision -> autocast type


# --- one step, one epoch ----------------------------------------------------------------------

def optimizer(model: nn.Module, config: BSQConfig, lr: float) -> torch.optim.SGD:
    """SGD with momentum; weight decay on everything but the log-scales (decay would pull s to 1).

    fused: one pass over each parameter, its gradient and momentum (the planes hold nbits times
    as many entries as the float weights, so the optimizer's share of a BSQ step matters).
    """
    named = list(model.named_parameters())
    groups = [dict(params=[p for n, p in named if not n.endswith("log_scale")]),
              dict(params=[p for n, p in named if n.endswith("log_scale")], weight_decay=0.0)]
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay, fused=True)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               alpha: float, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One SGD step on cross-entropy + alpha * bit_lasso, the planes clamped back into [0, 2] after it.

    A model without bit planes (float, or frozen for finetuning) has no Lasso and nothing to
    clamp. dtype: the forward pass's compute type; torch.bfloat16 autocasts its convolutions and
    matmuls (about 1.8x faster on a CPU with AVX-512 BF16), while the effective weights are
    computed in float32 before it and the loss, Lasso and update stay float32. Returns the
    logits (B, classes), the loss and the regularizer (0 without planes).
    """
    planes = bool(bit_weights(model))
    with weights_up_front(model), torch.autocast(x.device.type, dtype, enabled=dtype != torch.float32):
        out = model(x)
    loss = F.cross_entropy(out.float(), y)
    reg = bit_lasso(model) if planes else loss.new_zeros(())
    opt.zero_grad(set_to_none=True)
    (loss + alpha * reg).backward()
    opt.step()
    if planes:
        clamp_bits_(model)
    return out, loss, reg


def train_epoch(model: nn.Module, opt, ds: data.Dataset, config: BSQConfig, generator) -> dict:
    """One pass over the training set: mean loss, regularizer and accuracy."""
    model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=ds.train_x.device)  # loss, reg, correct
    dtype = COMPUTE_DTYPES[config.precision]
    for x, y in data.batches(ds.train_x, ds.train_y, config.batch_size, generator, ds.augment):
        out, loss, reg = train_step(model, opt, x, y, config.alpha, dtype)
        totals += torch.stack([loss.detach() * len(y), reg.detach() * len(y), (out.argmax(1) == y).sum()]).double()
    loss, reg, correct = (totals / len(ds.train_y)).tolist()  # one host sync per epoch
    return dict(train_loss=loss, reg_loss=reg, train_acc=correct)


def requantize_and_rebuild_(model: nn.Module, config: BSQConfig, lr: float) -> tuple[pd.DataFrame, torch.optim.SGD]:
    """requantize_ the model, and build the fresh optimizer its new parameter shapes need (momentum
    restarts, as in the original code). Returns requantize_'s table and the optimizer."""
    return requantize_(model, config.max_bits), optimizer(model, config, lr)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum((model(xb).argmax(1) == yb).sum() for xb, yb in data.batches(x, y, batch_size))
    return float(correct) / len(y)


@dataclass
class Event:
    """What one finished epoch produced; bits and layers are None while the model is float."""
    stage: str
    epoch: int
    step: int          # epochs trained since the run began
    index: int         # epochs of the plan done, this one included
    total: int         # epochs in the plan
    metrics: dict
    bits: pd.DataFrame | None
    layers: pd.DataFrame | None
    requant: pd.DataFrame | None  # requantize_'s table when this epoch re-quantized


def run_epoch(model, opt, ds, config: BSQConfig, generator, e: Epoch, folder: RunFolder):
    """Train one epoch (a snapshot trains none), re-quantize when due, then measure and write its
    rows. Returns the epoch's rows (Event fields) and the optimizer to go on with."""
    start = time.perf_counter()
    lr = stage_lr(config, e.stage, e.epoch)
    for group in opt.param_groups:
        group["lr"] = lr
    row = dict(train_loss=float("nan"), reg_loss=float("nan"), train_acc=float("nan"))
    if e.epoch > 0:
        row = train_epoch(model, opt, ds, config, generator)
        bad = [(what, row[key]) for what, key in (("loss", "train_loss"), ("bit regularizer", "reg_loss"))
               if not math.isfinite(row[key])]
        if bad:
            raise Diverged(f"the {bad[0][0]} became {bad[0][1]} in {e.stage} training (try a smaller lr or alpha)")
        if not bit_weights(model):
            row["reg_loss"] = float("nan")  # no planes, no Lasso
    requant = None
    if bit_weights(model) and (e.epoch % config.requant_every == 0 or e.epoch == getattr(config, f"{e.stage}_epochs")):
        requant, opt = requantize_and_rebuild_(model, config, stage_lr(config, e.stage, e.epoch + 1))
    keys = dict(stage=e.stage, epoch=e.epoch, step=e.step)
    layers = layer_precision(model)
    bits = None
    if layers.empty:  # still float
        size, layers = dict(avg_bits=float(FLOAT_BITS), compression=1.0), None
    else:
        s = size_of(layers.numel, layers.nbits)  # the size follows the layers frame, by construction
        size = dict(avg_bits=s.avg_bits, compression=s.compression)
        bits = bit_sparsity(model).assign(**keys)[FRAME_COLUMNS["bits"]]
        layers = layers.assign(**keys)[FRAME_COLUMNS["layers"]]
    row.update(test_acc=evaluate(model, ds.test_x, ds.test_y), **size, lr=lr)
    row.update(keys, seconds=time.perf_counter() - start)
    if bits is not None:
        folder.append("bits", bits)
        folder.append("layers", layers)
    folder.append("metrics", pd.DataFrame([row])[FRAME_COLUMNS["metrics"]])
    return dict(metrics=row, bits=bits, layers=layers, requant=requant), opt


# --- a run: new or resumed --------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but CUDA is not available here (use --device cpu or auto)")
    index, count = name.partition(":")[2], torch.cuda.device_count() if name.startswith("cuda") else 0
    if index and not (index.isascii() and index.isdigit() and int(index) < count):  # else it fails mid-run
        raise ValueError(f"device {name} does not exist here: this machine has cuda:0 to cuda:{count - 1}")
    return torch.device(name)


@contextmanager
def cpu_threads(n: int):
    """Run the body with n intra-op threads, then restore the caller's count (a notebook keeps its own)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _setup(config: BSQConfig, device: torch.device):
    """The dataset on device, the seeded float model and the batch-order generator."""
    ds = data.load(config.dataset, config.train_subset, config.test_subset, config.download).to(device)
    torch.manual_seed(config.seed)
    with warnings.catch_warnings():  # images too small give zero-size layers: _check_fits says so in one line
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        model = build_model(config, ds).to(device)
    return ds, model, torch.Generator(device).manual_seed(config.seed)


def train(config: BSQConfig, runs: str | os.PathLike | None = None, name: str | None = None,
          sweep: str | None = None, callbacks: Iterable[Callable[[Event], None]] = (),
          overwrite: bool = False, force: bool = False) -> Path:
    """Run config into the new folder <runs>/<name>/ and return its path.

    An existing name is an error unless overwrite=True replaces its run (a running one only when
    its process is gone; force=True takes over a run marked running on another host). Callbacks
    get an Event per epoch. An error once the run has begun marks it failed and raises RunFailed
    from it; a KeyboardInterrupt (Ctrl-C, or stop() from another process) marks it stopped and is
    re-raised. Either way the finished epochs stay, and resume() goes on.
    """
    root = runs_root(runs)
    prefix = config.model.removeprefix(TORCHVISION)  # a name is a plain folder name: no ':'
    path = root / check_name(name or f"{run_name(config, prefix)}-{datetime.now():%Y%m%d-%H%M%S}")
    prepare_root(root)
    with owning(path):  # one writer per run, from before the slow data load to the end
        if path.exists() and not overwrite:
            raise FileExistsError(f"run {path} already exists (pick another --name, or pass --resume or --overwrite)")
        if path.exists():
            check_idle(path, force)
        return _start(path, config, sweep, callbacks)


def resume(path: str | os.PathLike, config: BSQConfig | None = None,
           callbacks: Iterable[Callable[[Event], None]] = (), force: bool = False) -> Path:
    """Continue the run at path from its checkpoint (the epoch it was in is re-run; a run killed
    before its first checkpoint starts afresh) and return its path. config, when given, must equal
    the run's own: resuming cannot change a run. force: as for train()."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no run folder {path}")
    with owning(path):
        check_idle(path, force)
        if not (path / CHECKPOINT).exists():
            info = read_info(path)
            saved = BSQConfig.from_dict(info["config"])
            _check_same(path, config, saved)
            return _start(path, saved, info.get("sweep"), callbacks)
        ckpt = read_checkpoint(path)
        saved = BSQConfig.from_dict(ckpt["config"])
        _check_same(path, config, saved)
        device = resolve_device(saved.device)
        with cpu_threads(saved.threads):
            ds, model, generator = _setup(saved, device)
            enter_(model, saved, ckpt["stage"])
            model.load_state_dict(ckpt["model"])
            generator.set_state(ckpt["generator"])
            opt = optimizer(model, saved, stage_lr(saved, ckpt["stage"], 1))
            opt.load_state_dict(ckpt["optimizer"])
            folder = RunFolder.reopen(path, plan(saved)[:ckpt["done"]])
            return _run(folder, saved, model, ds, generator, opt, ckpt["done"], callbacks)


def _check_same(path: Path, given: BSQConfig | None, saved: BSQConfig) -> None:
    if given is not None and given != saved:
        own = saved.to_dict()
        changed = [f"{k} ({own[k]!r} in the run, {v!r} given)" for k, v in given.to_dict().items() if own[k] != v]
        raise ValueError(f"cannot resume {path} with another config: {', '.join(changed)}")


def _start(path: Path, config: BSQConfig, sweep: str | None, callbacks) -> Path:
    """The run of config from its first epoch, into the folder at path (a run's files there replaced)."""
    device = resolve_device(config.device)
    check_model(config.model)  # these two are refused before the data loads
    pretrained = _read_pretrained(config.pretrained) if config.pretrained else None
    with cpu_threads(config.threads):  # before the data: even its normalization sums floats
        ds, model, generator = _setup(config, device)
        if pretrained is not None:
            try:
                model.load_state_dict(pretrained)
            except RuntimeError as err:  # torch lists every missing and unexpected key, over many lines
                raise ValueError(f"--pretrained {config.pretrained} is not a float {config.model} for this dataset "
                                 f"({str(err).splitlines()[0][:100]}, ...)") from None
        _check_fits(model, ds, config)
        opt = optimizer(model, config, stage_lr(config, STAGES[0].name, 1))
        folder = RunFolder.create(path, config, device, sweep)  # then at once into _run, which marks how it ends
        return _run(folder, config, model, ds, generator, opt, 0, callbacks)


def _check_fits(model: nn.Module, ds, config: BSQConfig) -> None:
    """One image through the model (eval mode, no state changes), so that images too small for it
    are refused before the run, not after its first epoch."""
    model.eval()
    try:
        with torch.no_grad():
            model(ds.train_x[:1])
    except RuntimeError as err:
        raise ValueError(f"{config.model} cannot take {'x'.join(map(str, ds.shape))} images "
                         f"({str(err).splitlines()[0][:100]})") from None
    finally:
        model.train()


def _read_pretrained(path: str) -> dict:
    """The state_dict in the file at path, or a one-line ValueError (a truncated file, /dev/null, a pickle)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"--pretrained {path} does not exist") from None
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise ValueError(f"--pretrained {path} is not a torch state_dict ({type(err).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--pretrained {path} is not a state_dict (a mapping of names to tensors)")
    return state


def _run(folder: RunFolder, config: BSQConfig, model, ds, generator, opt, done: int, callbacks) -> Path:
    """The epochs of the plan after the first `done`, each written and checkpointed, then the export."""
    epochs = plan(config)
    stage = epochs[done - 1].stage if done else STAGES[0].name
    try:
        for index, e in enumerate(epochs[done:], done + 1):
            if e.stage != stage:
                if stage == "pretrain" and config.pretrain_epochs:
                    folder.save_float(model.state_dict())  # the float model: every sweep run starts from it
                enter_(model, config, e.stage, after=stage)
                stage = e.stage
                opt = optimizer(model, config, stage_lr(config, stage, e.epoch))
            rows, opt = run_epoch(model, opt, ds, config, generator, e, folder)
            folder.save_checkpoint(dict(config=config.to_dict(), stage=stage, done=index, model=model.state_dict(),
                                        optimizer=opt.state_dict(), generator=generator.get_state().cpu()))
            event = Event(e.stage, e.epoch, e.step, index, len(epochs), **rows)
            for callback in callbacks:
                callback(event)
        if stage == "pretrain":
            folder.save_float(model.state_dict())
        else:
            folder.save_model(export(model))
        folder.finish()
    except BaseException as err:  # a stop (Ctrl-C, or stop() from another process) is not a failure
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        try:
            if isinstance(err, KeyboardInterrupt):
                folder.stop()
            else:
                folder.fail(reason)
        except OSError:  # a full disk can refuse run.json too; keep the first error (the run then lists as stale)
            pass
        if isinstance(err, Exception):
            raise RunFailed(folder.path, reason) from err
        raise
    return folder.path


def stop(path: str | os.PathLike) -> None:
    """Ask the process training the run at path to stop: it marks the run stopped and keeps every
    finished epoch (resume() goes on). Only a bsq-explore process of this host is signalled, so a
    run.json cannot point the signal at anything else."""
    path = Path(path)
    info = read_info(path)
    pid = (info.get("provenance") or {}).get("pid")
    if info["status"] != "running" or not process_alive(info):
        raise ValueError(f"run {path.name} is not running on this host")
    command = process_command(info)
    if "bsq_explore" not in command and "bsq-explore" not in command:
        raise ValueError(f"process {pid} of run {path.name} is not a bsq-explore run; not stopping it")
    os.kill(pid, signal.SIGTERM)


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
    import json
    import tempfile

    if (Path(runs) / check_name(name)).exists():
        raise FileExistsError(f"run {name} already exists in {runs}")
    args = [sys.executable, "-m", "bsq_explore.cli", "train", "--config", "-", "--runs", str(runs), "--name", name]
    log = tempfile.TemporaryFile()  # a file, not a pipe: nobody reads it while the run writes its progress
    process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log,
                               start_new_session=True)
    process.stdin.write(json.dumps(config.to_dict()).encode())
    process.stdin.close()
    return Launch(name, process, log)
