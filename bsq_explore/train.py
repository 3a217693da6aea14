"""The staged run: float pretraining -> convert -> BSQ with re-quantization -> finetune -> export.

Every epoch appends to the run folder's frames (atomically) and emits an Event to callbacks.
"""
from __future__ import annotations

import io
import math
import os
import platform
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__, data, models
from .bsq import bit_lasso, clamp_bits_, export, freeze_, requantize_
from .config import BSQConfig
from .layers import convert_, weights_up_front
from .runs import (FRAME_COLUMNS, DamagedRun, check_name, load_run, prepare_root, process_alive, read_info,
                   runs_root, unreadable, write_atomic, write_frame, write_json)
from .stats import bit_sparsity, layer_precision, model_size


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class Event:
    """What one finished epoch produced; bits and layers are None in the float stage."""
    run_dir: Path
    stage: str
    epoch: int
    step: int          # epochs finished since the run began (0 for the conversion snapshot)
    total_steps: int
    metrics: dict
    bits: pd.DataFrame | None
    layers: pd.DataFrame | None
    requant: pd.DataFrame | None  # requantize_'s table when this epoch re-quantized


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but CUDA is not available here (use --device cpu or auto)")
    return torch.device(name)


def build_model(config: BSQConfig, ds: data.Dataset) -> nn.Module:
    c, h, w = ds.shape
    classes = len(ds.classes)
    if config.model == "mlp":
        return models.mlp(c * h * w, num_classes=classes, act_bits=config.act_bits)
    if config.model == "lenet5":
        return models.lenet5(c, classes, image_size=h, act_bits=config.act_bits)
    depth = int(config.model.removeprefix("resnet"))
    return models.CifarResNet(depth, classes, config.act_bits, in_channels=c)


def convert_filter(config: BSQConfig):
    """The paper's recipe keeps ResNet downsample shortcuts in float; everything else is converted."""
    return models.not_shortcut if config.model.startswith("resnet") else None


def plan(config: BSQConfig) -> list[tuple[str, int, int]]:
    """Every (stage, epoch, step) of a run in order; step counts the epochs trained since the start.

    BSQ epoch 0 is the snapshot right after conversion: it trains nothing, so it shares the
    step of the last float epoch.
    """
    entries = [("pretrain", e) for e in range(1, config.pretrain_epochs + 1)]
    if config.bsq_epochs:
        entries += [("bsq", e) for e in range(0, config.bsq_epochs + 1)]
    entries += [("finetune", e) for e in range(1, config.finetune_epochs + 1)]
    steps, step = [], 0
    for stage, epoch in entries:
        step += not (stage == "bsq" and epoch == 0)
        steps.append((stage, epoch, step))
    return steps


def stage_lr(config: BSQConfig, stage: str, epoch: int) -> float:
    base, milestones = {"pretrain": (config.pretrain_lr, config.pretrain_milestones),
                        "bsq": (config.bsq_lr, config.bsq_milestones),
                        "finetune": (config.finetune_lr, config.finetune_milestones)}[stage]
    return base * config.lr_gamma ** sum(epoch > m for m in milestones)


def optimizer(model: nn.Module, config: BSQConfig, lr: float) -> torch.optim.SGD:
    """SGD with momentum; weight decay on everything but the log-scales (decay would pull s to 1).

    fused: one pass over each parameter, its gradient and momentum (the planes hold nbits times
    as many entries as the float weights, so the optimizer's share of a BSQ step matters).
    """
    named = list(model.named_parameters())
    groups = [dict(params=[p for n, p in named if not n.endswith("log_scale")]),
              dict(params=[p for n, p in named if n.endswith("log_scale")], weight_decay=0.0)]
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay, fused=True)


def shape_for(model: nn.Module, config: BSQConfig, stage: str) -> nn.Module:
    """Give a float model the structure of a stage (before loading that stage's state_dict)."""
    if stage in ("bsq", "finetune"):
        convert_(model, config.nbits, filter_fn=convert_filter(config))
    if stage == "finetune":
        freeze_(model)
    return model


def train_epoch(model, opt, ds, config, generator, stage) -> dict:
    """One pass over the training set; bsq adds alpha * bit_lasso and clamps the planes after each step."""
    model.train()
    bsq = stage == "bsq"
    totals = torch.zeros(3, dtype=torch.float64, device=ds.train_x.device)  # loss, reg, correct
    for x, y in data.batches(ds.train_x, ds.train_y, config.batch_size, generator, ds.augment):
        with weights_up_front(model):
            out = model(x)
        loss = F.cross_entropy(out, y)
        reg = bit_lasso(model) if bsq else loss.new_zeros(())
        opt.zero_grad(set_to_none=True)
        (loss + config.alpha * reg).backward()
        opt.step()
        if bsq:
            clamp_bits_(model)
        totals += torch.stack([loss.detach() * len(y), reg.detach() * len(y), (out.argmax(1) == y).sum()]).double()
    loss, reg, correct = (totals / len(ds.train_y)).tolist()  # one host sync per epoch
    if not math.isfinite(loss) or not math.isfinite(reg):
        what, value = ("loss", loss) if not math.isfinite(loss) else ("bit regularizer", reg)
        raise Diverged(f"the {what} became {value} in {stage} training (try a smaller lr or alpha)")
    return dict(train_loss=loss, reg_loss=reg if bsq else float("nan"), train_acc=correct)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum((model(xb).argmax(1) == yb).sum() for xb, yb in data.batches(x, y, batch_size))
    return float(correct) / len(y)


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def progress_bar(total: int, desc: str) -> Callable[[Event], None]:
    """The default callback: a tqdm.auto bar (terminal or notebook) over the epochs of the run."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="epoch")

    def update(event: Event) -> None:
        bar.update(1)
        bar.set_postfix(stage=event.stage, acc=f"{event.metrics['test_acc']:.3f}",
                        bits=f"{event.metrics['avg_bits']:.2f}")
        if bar.n >= total:
            bar.close()
    update.close = bar.close  # train() closes it when a run stops early, so its error prints below the bar
    return update


def _this_process() -> dict:
    """The provenance of the process writing a run (a resumed run records its new writer)."""
    return dict(host=socket.gethostname(), pid=os.getpid(), threads=torch.get_num_threads())


class RunFolder:
    """Writes one run's folder: run.json, the frames after every epoch, checkpoint.pt and model.pt."""

    def __init__(self, path: Path, info: dict, frames: dict[str, pd.DataFrame]):
        self.path, self.info, self.frames = path, info, frames

    @classmethod
    def create(cls, path: Path, config: BSQConfig, device: torch.device, sweep: str | None) -> "RunFolder":
        path.mkdir(parents=True)
        info = dict(config=config.to_dict(), sweep=sweep, status="running", error=None, summary={},
                    provenance=dict(package=__version__, torch=torch.__version__, python=platform.python_version(),
                                    git_sha=_git_sha(), device=str(device), seed=config.seed,
                                    start=_now(), end=None, **_this_process()))
        folder = cls(path, info, {k: pd.DataFrame(columns=c) for k, c in FRAME_COLUMNS.items()})
        try:
            folder.write_info()
        except OSError:  # leave no folder without run.json behind: it would list as damaged
            shutil.rmtree(path, ignore_errors=True)
            raise
        return folder

    @classmethod
    def reopen(cls, path: Path, kept: list[tuple[str, int, int]]) -> "RunFolder":
        """Continue a run: keep the rows of the checkpointed epochs (a later, unsaved one is re-run)."""
        for tmp in path.glob(".*.tmp"):  # half-written files of a killed process
            tmp.unlink(missing_ok=True)
        run = load_run(path)
        keys = {(stage, epoch) for stage, epoch, _ in kept}
        frames = {}
        for k in FRAME_COLUMNS:
            frame = getattr(run, k)
            mask = [key in keys for key in zip(frame.stage, frame.epoch)]
            frames[k] = frame[mask].reset_index(drop=True)
        run.info.update(status="running", error=None)
        run.info["provenance"].update(end=None, **_this_process())
        folder = cls(path, run.info, frames)
        folder.write_info()
        return folder

    def write_info(self) -> None:
        write_json(self.path / "run.json", self.info)

    def append(self, key: str, rows: pd.DataFrame) -> None:
        old = self.frames[key]
        self.frames[key] = rows if old.empty else pd.concat([old, rows], ignore_index=True)
        write_frame(self.path / f"{key}.parquet", self.frames[key])

    def save(self, name: str, obj) -> None:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        write_atomic(self.path / name, buffer.getvalue())

    def end(self, status: str, error: str | None = None, **summary) -> None:
        self.info.update(status=status, error=error)
        self.info["summary"].update(summary)
        self.info["provenance"]["end"] = _now()
        self.write_info()


@contextmanager
def cpu_threads(n: int):
    """Run the body with n intra-op threads, then restore the caller's count (a notebook keeps its own)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(config: BSQConfig, runs: str | os.PathLike | None = None, name: str | None = None,
          sweep: str | None = None, callbacks: Iterable[Callable[[Event], None]] | None = None,
          resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Run config into the folder <runs>/<name>/ and return its path.

    resume=True continues the named run from its checkpoint; overwrite=True replaces a run of
    that name (otherwise an existing name is an error). Callbacks get an Event per epoch.
    Errors inside training mark the run failed (with the reason) and re-raise; finished epochs stay.
    """
    root = runs_root(runs)
    name = check_name(name or f"{config.model}-a{config.alpha:g}-{datetime.now():%Y%m%d-%H%M%S}")
    path = root / name
    device = resolve_device(config.device)
    steps = plan(config)
    ckpt = None
    if path.exists() and not (resume or overwrite):
        raise FileExistsError(f"run {path} already exists (pick another --name, or pass --resume or --overwrite)")
    if path.exists():
        _check_idle(path)
    if resume:
        if not (path / "checkpoint.pt").exists():
            raise FileNotFoundError(f"cannot resume {path}: it has no checkpoint.pt")
        try:
            ckpt = torch.load(path / "checkpoint.pt", map_location=device, weights_only=True)
            config = BSQConfig.from_dict(ckpt["config"])
        except Exception as err:  # torch raises several types for a truncated or foreign file
            raise unreadable(path / "checkpoint.pt", err) from None
        steps = plan(config)
    prepare_root(root)

    with cpu_threads(config.threads):  # before the data: even its normalization sums floats
        ds = data.load(config.dataset, config.train_subset, config.test_subset, config.download).to(device)
        torch.manual_seed(config.seed)
        model = build_model(config, ds).to(device)
        generator = torch.Generator(device).manual_seed(config.seed)
        if config.pretrained and not resume:
            model.load_state_dict(torch.load(config.pretrained, map_location=device, weights_only=True))

        done, stage = 0, "pretrain"
        if ckpt is not None:
            stage, done = ckpt["stage"], ckpt["done"]
            shape_for(model, config, stage)
            model.load_state_dict(ckpt["model"])
            generator.set_state(ckpt["generator"])
            folder = RunFolder.reopen(path, steps[:done])
        else:
            if overwrite and path.exists():
                shutil.rmtree(path)
            folder = RunFolder.create(path, config, device, sweep)
        opt = optimizer(model, config, stage_lr(config, stage, 1))
        if ckpt is not None:
            opt.load_state_dict(ckpt["optimizer"])

        listeners = list(callbacks or [])
        if progress:
            listeners.append(progress_bar(len(steps) - done, name))
        try:
            for index in range(done, len(steps)):
                next_stage, epoch, step = steps[index]
                if next_stage != stage:
                    if stage == "pretrain":  # the float model: every sweep run starts from it
                        if config.pretrain_epochs:
                            folder.save("float.pt", model.state_dict())
                        convert_(model, config.nbits, filter_fn=convert_filter(config))
                    if next_stage == "finetune":
                        freeze_(model)
                    stage = next_stage
                    opt = optimizer(model, config, stage_lr(config, stage, epoch))
                event = run_epoch(model, opt, ds, config, generator, stage, epoch, step, steps[-1][2], folder)
                if event.requant is not None:
                    opt = optimizer(model, config, stage_lr(config, stage, epoch + 1))  # shapes changed
                folder.save("checkpoint.pt", dict(config=config.to_dict(), stage=stage, done=index + 1,
                                                  model=model.state_dict(), optimizer=opt.state_dict(),
                                                  generator=generator.get_state().cpu()))
                for listener in listeners:
                    listener(event)
            if stage == "pretrain":
                folder.save("float.pt", model.state_dict())
            else:
                folder.save("model.pt", export(model))
            metrics = folder.frames["metrics"]
            bsq_rows = metrics[metrics.stage == "bsq"]
            last = metrics.iloc[-1] if len(metrics) else None
            folder.end("finished",
                       test_acc=float(last.test_acc) if last is not None else None,
                       bsq_acc=float(bsq_rows.test_acc.iloc[-1]) if len(bsq_rows) else None,
                       avg_bits=float(last.avg_bits) if last is not None else None,
                       compression=float(last.compression) if last is not None else None,
                       collapsed=bool(last is not None and last.avg_bits == 0))
        except BaseException as err:
            reason = "interrupted" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"
            try:
                folder.end("failed", error=reason.splitlines()[0])
            except OSError:  # a full disk can refuse run.json too; keep the first error (the run then lists as stale)
                pass
            err.failed_run = path  # lets the CLI tell a failed run (exit 1) from bad input (exit 2)
            raise
        finally:
            if progress:
                listeners[-1].close()
    return path


def _check_idle(path: Path) -> None:
    """Refuse to resume or overwrite a run whose process still runs on this host: two writers would mix it."""
    try:
        info = read_info(path)
    except DamagedRun:
        return
    pid = (info.get("provenance") or {}).get("pid")
    if info["status"] == "running" and pid != os.getpid() and process_alive(info):
        raise FileExistsError(f"run {path} is still running (process {pid}); stop it first")


def run_epoch(model, opt, ds, config, generator, stage, epoch, step, total_steps, folder) -> Event:
    """Train (or, at BSQ epoch 0, only re-quantize) one epoch, then measure and write its rows."""
    start = time.perf_counter()
    lr = stage_lr(config, stage, epoch)
    for group in opt.param_groups:
        group["lr"] = lr
    row = dict(train_loss=float("nan"), reg_loss=float("nan"), train_acc=float("nan"))
    if not (stage == "bsq" and epoch == 0):
        row = train_epoch(model, opt, ds, config, generator, stage)
    requant = None
    if stage == "bsq" and (epoch % config.requant_every == 0 or epoch == config.bsq_epochs):
        requant = requantize_(model, config.max_bits)
    keys = dict(stage=stage, epoch=epoch, step=step)
    bits = layers = None
    if stage == "pretrain":
        size = dict(avg_bits=32.0, compression=1.0)
    else:
        s = model_size(model)
        size = dict(avg_bits=s.avg_bits, compression=s.compression)
        bits = bit_sparsity(model).assign(**keys)[FRAME_COLUMNS["bits"]]
        layers = layer_precision(model).assign(**keys)[FRAME_COLUMNS["layers"]]
    row.update(test_acc=evaluate(model, ds.test_x, ds.test_y), **size, lr=lr)
    row.update(keys, seconds=time.perf_counter() - start)
    metrics = pd.DataFrame([row])[FRAME_COLUMNS["metrics"]]
    if bits is not None:
        folder.append("bits", bits)
        folder.append("layers", layers)
    folder.append("metrics", metrics)
    return Event(folder.path, stage, epoch, step, total_steps, row, bits, layers, requant)


def launch(preset_name: str, runs: str | os.PathLike, name: str, **overrides) -> subprocess.Popen:
    """Start `bsq-explore train` as a background process in its own session, so it outlives its
    caller (an app page can close without killing or corrupting the run). The config is
    validated here first, so bad input fails at once instead of in the background."""
    import sys

    from .config import preset

    preset(preset_name, **overrides)
    if (Path(runs) / check_name(name)).exists():
        raise FileExistsError(f"run {name} already exists in {runs}")
    args = [sys.executable, "-m", "bsq_explore.cli", "train", "--preset", preset_name, "--runs", str(runs), "--name", name]
    for key, value in overrides.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
