"""The recipe: float pretraining -> convert_ -> BSQ, requantize_ every few epochs -> freeze_ -> finetune."""
from __future__ import annotations

import copy
import math
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import data
from .bsq import bit_lasso, bit_weights, clamp_bits_, freeze_, requantize_
from .config import CUSTOM, TORCHVISION, BSQConfig, differences
from .export import export
from .jobs import check_idle, owning
from .layers import convert_, weights_up_front
from .models import build_model, check_model, convert_filter
from .paths import runs_root
from .runs import DamagedRun, load_run, read_checkpoint, read_info, read_torch, run_name
from .stats import FLOAT_BITS, bit_sparsity, layer_precision, size_of
from .store import CHECKPOINT, FRAME_COLUMNS, RunFolder, check_name, prepare_root

__all__ = ["train", "resume", "fit", "train_step", "laid_out", "optimizer", "requantize_and_rebuild_", "evaluate", "Event",
           "RunFailed", "Diverged", "COMPUTE_DTYPES"]

COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # config.precision -> autocast type


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


class RunFailed(RuntimeError):
    """A run stopped by an error after it began; its folder keeps every finished epoch and the reason."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"run {path} failed: {reason}")
        self.path = path


# --- the recipe -------------------------------------------------------------------------------

def _recipe(run: RunState) -> None:
    """A run from its float model to its integer export. Resuming replays it: the epochs already
    done are skipped, and the checkpoint is loaded where the last of them ends."""
    config = run.config
    run.stage_("pretrain")                       # float epochs; the last one writes float.pt
    if config.bsq_epochs == config.finetune_epochs == 0:
        return                                   # a float run: its float model is the result
    chosen = config.chosen_bits()
    if chosen:                                   # each layer at the bits chosen for it (sensitivity.allocate_bits)
        for bits in sorted(set(chosen.values())):
            convert_(run.model, bits, filter_fn=lambda module, name, bits=bits: chosen.get(name) == bits)
    else:
        convert_(run.model, config.nbits, filter_fn=run.keep)
    run.stage_("bsq")                            # epoch 0, the model as converted, then the BSQ epochs,
    freeze_(run.model)                           # each re-quantizing every requant_every epochs
    run.stage_("finetune")
    run.folder.save_model(export(run.model))


class Epoch(NamedTuple):
    stage: str
    epoch: int  # within the stage; 0 is a snapshot stage's entry
    step: int   # epochs trained since the run began (a snapshot trains none: it shares its step)


@dataclass
class RunState:
    """What the recipe carries from epoch to epoch."""
    config: BSQConfig
    model: nn.Module
    ds: data.Dataset
    generator: torch.Generator
    folder: RunFolder
    callbacks: list = field(default_factory=list)
    keep: Callable | None = None    # convert_'s filter_fn: the layers that quantize (None: all)
    checkpoint: dict | None = None  # a resumed run's, loaded where its epochs end
    opt: torch.optim.Optimizer | None = None
    index: int = 0                  # epochs of the run passed, done before or now
    step: int = 0

    def stage_(self, stage: str) -> None:
        """Enter a stage with a fresh optimizer and run its epochs (those not done before)."""
        schedule = self.config.schedule(stage)
        self.opt = optimizer(self.model, self.config, schedule.lr_at(1))
        for epoch in range(0 if schedule.snapshot else 1, schedule.epochs + 1):
            self.index += 1
            self.step += epoch > 0
            e = Epoch(stage, epoch, self.step)
            if self.checkpoint is None:
                run_epoch(self, e)
            elif self.index == self.checkpoint["done"]:
                self._load_checkpoint()

    def _load_checkpoint(self) -> None:
        ckpt, self.checkpoint = self.checkpoint, None
        self.model.load_state_dict(ckpt["model"])
        self.generator.set_state(ckpt["generator"])
        self.opt = optimizer(self.model, self.config, 0.0)
        self.opt.load_state_dict(ckpt["optimizer"])

    def save_checkpoint(self) -> None:
        self.folder.save_checkpoint(dict(config=self.config.to_dict(), done=self.index, model=self.model.state_dict(),
                                         optimizer=self.opt.state_dict(), generator=self.generator.get_state().cpu()))


def run_epoch(run: RunState, e: Epoch) -> None:
    """Train one epoch (a snapshot trains none), re-quantize when due, then write its rows, the
    float model after the last float epoch, and the checkpoint; then tell the callbacks."""
    start = time.perf_counter()
    schedule = run.config.schedule(e.stage)
    lr = schedule.lr_at(e.epoch)
    for group in run.opt.param_groups:
        group["lr"] = lr
    row = dict(train_loss=math.nan, reg_loss=math.nan, train_acc=math.nan)
    if e.epoch:
        row = train_epoch(run.model, run.opt, run.ds, run.config, run.generator)
        _check_finite(row, e.stage)
    requant = None
    if bit_weights(run.model) and (e.epoch % run.config.requant_every == 0 or e.epoch == schedule.epochs):
        requant, run.opt = requantize_and_rebuild_(run.model, run.config, schedule.lr_at(e.epoch + 1))
    rows = _measure(run.model, run.ds, e, dict(row, lr=lr))
    rows["metrics"]["seconds"] = time.perf_counter() - start
    for kind in ("bits", "layers", "metrics"):  # metrics last: a reader sees an epoch once all its rows are there
        if rows[kind] is not None:
            run.folder.append(kind, pd.DataFrame([rows[kind]]) if kind == "metrics" else rows[kind])
    if e.stage == "pretrain" and e.epoch == schedule.epochs:
        run.folder.save_float(run.model.state_dict())  # every run of a sweep starts from it
    run.save_checkpoint()
    event = Event(e.stage, e.epoch, e.step, run.index, run.config.epoch_count(), requant=requant, **rows)
    for callback in run.callbacks:
        callback(event)


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
    matmuls (faster on a CPU with AVX-512 BF16, on images laid_out for it: benchmarks/engine.py),
    while the effective weights are computed in float32 before it and the loss, Lasso and update
    stay float32. Returns the logits (B, classes), the loss and the regularizer (0 without planes).
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


def laid_out(x: torch.Tensor, config: BSQConfig) -> torch.Tensor:
    """A batch as config's training steps read it: under bf16, images channels_last, since oneDNN's bf16
    convolutions would reorder NCHW into their own layout and back around each one (README: --precision).

    fp32 steps keep NCHW (channels_last changes the order of their float sums), and so does a model
    of one's own, whose .view() calls may need it; one-channel images are both layouts at once.
    """
    if config.precision == "fp32" or config.model.startswith(CUSTOM) or x.dim() != 4:
        return x
    return x.contiguous(memory_format=torch.channels_last)


def train_epoch(model: nn.Module, opt, ds: data.Dataset, config: BSQConfig, generator) -> dict:
    """One pass over the training set: mean loss, regularizer (NaN without planes) and accuracy."""
    model.train()
    dtype = COMPUTE_DTYPES[config.precision]
    totals = torch.zeros(3, dtype=torch.float64, device=ds.train_x.device)  # loss, reg, correct
    for x, y in data.batches(ds.train_x, ds.train_y, config.batch_size, generator, ds.augment):
        out, loss, reg = train_step(model, opt, laid_out(x, config), y, config.alpha, dtype)
        totals += torch.stack([loss.detach() * len(y), reg.detach() * len(y), (out.argmax(1) == y).sum()]).double()
    loss, reg, correct = (totals / len(ds.train_y)).tolist()  # one host sync per epoch
    return dict(train_loss=loss, reg_loss=reg if bit_weights(model) else math.nan, train_acc=correct)


def _check_finite(row: dict, stage: str) -> None:
    for what, key in (("loss", "train_loss"), ("bit regularizer", "reg_loss")):
        if math.isinf(row[key]) or (math.isnan(row[key]) and key == "train_loss"):
            raise Diverged(f"the {what} became {row[key]} in {stage} training (try a smaller lr or alpha)")


def requantize_and_rebuild_(model: nn.Module, config: BSQConfig, lr: float) -> tuple[pd.DataFrame, torch.optim.SGD]:
    """requantize_ the model, and build the fresh optimizer its new parameter shapes need (momentum
    restarts, as in the original code). Returns requantize_'s table and the optimizer."""
    return requantize_(model, config.max_bits), optimizer(model, config, lr)


EVAL_BATCH = 1000  # quantized activations scale by their batch's maximum: a score depends on its batches


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH) -> float:
    """Test accuracy in eval mode and float32, whatever precision the model trained in."""
    model.eval()
    correct = sum((model(xb).argmax(1) == yb).sum() for xb, yb in data.batches(x, y, batch_size))
    return float(correct) / len(y)


def _measure(model: nn.Module, ds: data.Dataset, e: Epoch, metrics: dict) -> dict:
    """The epoch's rows: metrics (with test accuracy and size) and, once converted, bits and layers."""
    keys = dict(stage=e.stage, epoch=e.epoch, step=e.step)
    layers = layer_precision(model)
    if layers.empty:  # still float
        size, bits, layers = dict(avg_bits=float(FLOAT_BITS), compression=1.0), None, None
    else:
        s = size_of(layers.numel, layers.nbits)  # the size follows the layers frame, by construction
        size = dict(avg_bits=s.avg_bits, compression=s.compression)
        bits = bit_sparsity(model).assign(**keys)[FRAME_COLUMNS["bits"]]
        layers = layers.assign(**keys)[FRAME_COLUMNS["layers"]]
    metrics = dict(metrics, test_acc=evaluate(model, ds.test_x, ds.test_y), **size, **keys)
    return dict(metrics={k: metrics.get(k, math.nan) for k in FRAME_COLUMNS["metrics"]}, bits=bits, layers=layers)


@dataclass
class Event:
    """What one finished epoch produced; bits and layers are None while the model is float."""
    stage: str
    epoch: int
    step: int          # epochs trained since the run began
    index: int         # epochs of the run done, this one included
    total: int         # epochs in the run
    metrics: dict
    bits: pd.DataFrame | None
    layers: pd.DataFrame | None
    requant: pd.DataFrame | None  # requantize_'s table when this epoch re-quantized


# --- a run: new or resumed --------------------------------------------------------------------

def train(config: BSQConfig, runs: str | os.PathLike | None = None, name: str | None = None,
          sweep: str | None = None, callbacks: Iterable[Callable[[Event], None]] = (),
          overwrite: bool = False, force: bool = False) -> Path:
    """Run config into the new folder <runs>/<name>/.

    Args:
        config: the run (a preset, or BSQConfig(...)).
        runs: the runs root (default $BSQ_RUNS, else data/runs of this checkout).
        name: the run's folder name (default: model, alpha and the time).
        sweep: the sweep it belongs to, recorded in run.json.
        callbacks: each gets an Event after every epoch (a progress bar, a live plot).
        overwrite: replace an existing run of that name (a running one only when its process is gone).
        force: take over a run marked running on another host.

    Returns:
        The run folder's path.

    An error once the run has begun marks it failed and raises RunFailed from it; a
    KeyboardInterrupt (Ctrl-C, or jobs.stop() from another process) marks it stopped and is
    re-raised. Either way the finished epochs stay, and resume() goes on.

    Example:
        >>> path = train(preset("digits-mlp", alpha=0.3), name="digits-a0.3")
        >>> load_run(path).summary["avg_bits"]
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
    """Continue the run at path from its checkpoint: the epoch it was in is re-run, and a run
    killed before its first checkpoint starts afresh.

    Args:
        path: the run folder.
        config: when given, must equal the run's own: resuming cannot change a run.
        callbacks, force: as for train().

    Returns:
        The run folder's path.

    Example:
        >>> resume("data/runs/digits-a0.3")  # after Ctrl-C, a kill or a crash
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no run folder {path}")
    with owning(path):
        check_idle(path, force)
        info = read_info(path)
        if info["status"] == "finished":  # never restarted: its checkpoint may be pruned, its model is the result
            raise ValueError(f"run {path.name} has finished: there is nothing to resume (--overwrite trains it anew)")
        if not (path / CHECKPOINT).exists():
            saved = BSQConfig.from_dict(info["config"])
            _check_same(path, config, saved)
            return _start(path, saved, info.get("sweep"), callbacks)
        ckpt = read_checkpoint(path)
        saved = BSQConfig.from_dict(ckpt["config"])
        _check_same(path, config, saved)
        device = resolve_device(saved.device)
        with _cpu_threads(saved.threads):
            ds, model, generator = _setup(saved, device)
            return _carry_on(path, ckpt, ds, model, generator, callbacks, convert_filter(saved))


def _carry_on(path: Path, ckpt: dict, ds: data.Dataset, model: nn.Module, generator: torch.Generator,
             callbacks=(), keep: Callable | None = None) -> Path:
    """Continue the run at path from its checkpoint ckpt, with the data, float model and generator
    that its config builds (resume) or that were given again (fit). keep: convert_'s filter."""
    run = load_run(path)
    folder = RunFolder.reopen(path, run.info, run.frames(), ckpt["done"], ds.record())
    config = BSQConfig.from_dict(ckpt["config"])
    return _run(RunState(config, model, ds, generator, folder, list(callbacks), keep, ckpt))


def fit(model: nn.Module, train, test, config: BSQConfig | None = None, runs: str | os.PathLike | None = None,
        name: str | None = None, callbacks: Iterable[Callable[[Event], None]] = (),
        filter_fn: Callable[[nn.Module, str], bool] | None = None, overwrite: bool = False, force: bool = False) -> Path:
    """Train model on train, scored on test, through the recipe (float epochs, BSQ, finetune) into
    the run folder <runs>/<name>/, which `bsq-explore ls/show/export`, the app and the notebooks read.

    The model is copied first (yours stays float); fit again with the same name, model and data
    resumes a stopped run from its checkpoint. config.model and config.dataset are recorded as
    custom:<class name>: the kit cannot rebuild them (What-if and QONNX export say so), but every
    frame, the summary and model.pt (export.load_quantized loads it into your model) are there.

    Args:
        model: any nn.Module whose Conv2d and Linear layers are to be quantized.
        train, test: each (x, y) tensors, or a DataLoader (any iterable of (x, y) batches), read once
            into memory; y holds class numbers 0, 1, ...
        config: the schedule, alpha, precision, ... (default BSQConfig()); its model and dataset are
            replaced as above.
        runs: the runs root (default $BSQ_RUNS, else paths.RUNS).
        name: the run's folder name (default: custom-<class>-<time>).
        callbacks: each gets an Event after every epoch.
        filter_fn: convert_'s filter, (module, name) -> bool: the layers that quantize (default: all
            but those config.float_layers names).
        overwrite: replace a run of that name, finished or not.
        force: take over a run marked running on another host.

    Returns:
        The run folder's path.

    Example:
        >>> path = fit(MyNet(), (x_train, y_train), test_loader, preset("digits-cnn", alpha=0.1), name="mine")
        >>> load_run(path).summary["avg_bits"]
    """
    ds = data.load_splits(train, test)
    config = (config or BSQConfig()).replace(model=CUSTOM + type(model).__name__, dataset=ds.name)
    root = runs_root(runs)
    path = root / check_name(name or f"custom-{type(model).__name__.lower()}-{datetime.now():%Y%m%d-%H%M%S}")
    prepare_root(root)
    device = resolve_device(config.device)
    with owning(path), _cpu_threads(config.threads):
        if path.exists():
            check_idle(path, force)
        ckpt = _resumable(path, config, ds) if path.exists() and not overwrite else None
        torch.manual_seed(config.seed)  # dropout and any other draw from the global generator, as in train
        model, ds = copy.deepcopy(model).to(device), ds.to(device)
        generator = torch.Generator(device).manual_seed(config.seed)
        keep = filter_fn or convert_filter(config)
        if ckpt is None:
            return _begin(path, config, ds, model, generator, callbacks=callbacks, keep=keep)
        return _carry_on(path, ckpt, ds, model, generator, callbacks, keep)


def _resumable(path: Path, config: BSQConfig, ds: data.Dataset) -> dict | None:
    """The checkpoint of the unfinished run at path, made with config on data like ds (None: killed
    before its first); a finished run is a FileExistsError, another config or data a ValueError."""
    info = read_info(path)
    if info["status"] == "finished":
        raise FileExistsError(f"run {path} has finished (pick another name, or pass overwrite=True to train it anew)")
    ran, given = info.get("data") or {}, ds.record()
    if (ran.get("shape"), ran.get("classes")) != (given["shape"], given["classes"]):
        raise ValueError(f"cannot resume {path} with other data: it trained on items of shape {ran.get('shape')} "
                         f"in {len(ran.get('classes') or [])} classes")
    if not (path / CHECKPOINT).exists():
        return None
    ckpt = read_checkpoint(path)
    _check_same(path, config, BSQConfig.from_dict(ckpt["config"]))
    return ckpt


def _check_same(path: Path, given: BSQConfig | None, saved: BSQConfig) -> None:
    if given is not None and given != saved:
        raise ValueError(f"cannot resume {path} with another config: {', '.join(differences(saved, given))}")


def _start(path: Path, config: BSQConfig, sweep: str | None, callbacks) -> Path:
    """The run of config from its first epoch, into the folder at path (a run's files there replaced)."""
    device = resolve_device(config.device)
    check_model(config.model)  # these two are refused before the data loads
    pretrained = _read_pretrained(config.pretrained) if config.pretrained else None
    with _cpu_threads(config.threads):  # before the data: even its normalization sums floats
        ds, model, generator = _setup(config, device)
        if pretrained is not None:
            try:
                model.load_state_dict(pretrained)
            except RuntimeError as err:  # torch lists every missing and unexpected key, over many lines
                raise ValueError(f"--pretrained {config.pretrained} is not a float {config.model} for this dataset "
                                 f"({str(err).splitlines()[0][:100]}, ...)") from None
        return _begin(path, config, ds, model, generator, sweep, callbacks, convert_filter(config))


def _begin(path: Path, config: BSQConfig, ds: data.Dataset, model: nn.Module, generator: torch.Generator,
          sweep: str | None = None, callbacks=(), keep: Callable | None = None) -> Path:
    """Check that model takes ds's items and leaves keep (convert_'s filter) a layer to quantize,
    then run config from its first epoch into the folder at path (a run's files there replaced)."""
    _check_fits(model, ds, config)
    _check_converts(model, config, keep)
    folder = RunFolder.create(path, config, ds.train_x.device, sweep, ds.record())  # then at once into _run
    return _run(RunState(config, model, ds, generator, folder, list(callbacks), keep))


def _run(run: RunState) -> Path:
    """The recipe, then the run marked finished; or failed (raising RunFailed), or stopped."""
    try:
        _recipe(run)
        run.folder.finish()
    except BaseException as err:  # a stop (Ctrl-C, or stop() from another process) is not a failure
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        try:
            if isinstance(err, KeyboardInterrupt):
                run.folder.stop()
            else:
                run.folder.fail(reason)
        except OSError:  # a full disk can refuse run.json too; keep the first error (the run then lists as stale)
            pass
        if isinstance(err, Exception):
            raise RunFailed(run.folder.path, reason) from err
        raise
    return run.folder.path


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
def _cpu_threads(n: int):
    """Run the body with n intra-op threads, then restore the caller's count (a notebook keeps its own)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _setup(config: BSQConfig, device: torch.device):
    """The dataset on device, the seeded float model and the batch-order generator."""
    ds = data.load_for(config).to(device)
    torch.manual_seed(config.seed)
    with warnings.catch_warnings():  # images too small give zero-size layers: _check_fits says so in one line
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        model = build_model(config, ds).to(device)
    return ds, model, torch.Generator(device).manual_seed(config.seed)


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


def _check_converts(model: nn.Module, config: BSQConfig, keep: Callable | None) -> None:
    """A run that quantizes must leave convert_ a layer to quantize, and layer_bits must name exactly those."""
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and (keep is None or keep(m, n))]
    if (config.bsq_epochs or config.finetune_epochs) and not layers:
        raise ValueError(f"no layer of {config.model} is left to quantize (float_layers {config.float_layers!r}, "
                         "or fit's filter_fn)")
    chosen = config.chosen_bits()
    if chosen and set(chosen) != set(layers):
        wrong = sorted(set(chosen) ^ set(layers))
        raise ValueError(f"layer_bits must give bits to exactly the layers that convert; check {', '.join(wrong[:5])}")


def _read_pretrained(path: str) -> dict:
    """The state_dict in the file at path, or a one-line ValueError (a truncated file, /dev/null, a pickle)."""
    try:
        state = read_torch(Path(path), f"--pretrained {path} does not exist")
    except FileNotFoundError as err:
        raise ValueError(str(err)) from None
    except DamagedRun as err:
        raise ValueError(f"--pretrained {path} is not a torch state_dict ({err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--pretrained {path} is not a state_dict (a mapping of names to tensors)")
    return state
