"""The paper recipe at GPU speed (issue 8): (a) float vs BSQ training-step throughput of ResNet-20
at batch 128, (b) a reduced recipe (pretrain, BSQ with re-quantization, finetune) that writes a
run folder. Prints one table. Without CUDA it runs the same code path on the quick preset.

Run by hand, on a GPU machine:
    python benchmarks/gpu_recipe.py --data folder:../shared/datasets/cifar10 --runs data/runs
"""
import argparse
import copy
import statistics
import sys
import time

import torch

from bsq_explore.config import STAGES, preset
from bsq_explore.layers import convert_
from bsq_explore.models import not_shortcut, resnet20
from bsq_explore.progress import ProgressBar
from bsq_explore.runs import load_run
from bsq_explore.train import COMPUTE_DTYPES, laid_out, optimizer, resolve_device, train, train_step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_ms(model, device, steps: int, precision: str = "fp32") -> float:
    """Median milliseconds of train_step (forward, loss, backward, SGD, clamp) at batch 128."""
    torch.manual_seed(0)
    config = preset("cifar10-resnet20", precision=precision)
    x = laid_out(torch.randn(128, 3, 32, 32, device=device), config)
    y = torch.randint(0, 10, (128,), device=device)
    opt = optimizer(model, config, lr=0.01)
    times = []
    for i in range(steps + 10):
        sync(device)
        start = time.perf_counter()
        train_step(model, opt, x, y, 5e-3, COMPUTE_DTYPES[precision])
        sync(device)
        if i >= 10:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="folder:../shared/datasets/cifar10")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runs", default="data/runs")
    parser.add_argument("--name", default="cifar10-resnet20-reduced")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--minutes", type=float, default=6.0,
                        help="time for the reduced recipe on a GPU: epochs are sized from the measured step time")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = []

    float_model = resnet20(act_bits=4).to(device)
    bsq_model = convert_(copy.deepcopy(float_model), 8, filter_fn=not_shortcut)
    f_ms, b_ms = step_ms(float_model, device, args.steps), step_ms(bsq_model, device, args.steps)
    rows += [("float step, batch 128 (ms)", f"{f_ms:.2f}"), ("BSQ step, batch 128 (ms)", f"{b_ms:.2f}"),
             ("BSQ / float step", f"{b_ms / f_ms:.2f}"), ("BSQ epoch from steps, 391 x 128 (s)", f"{b_ms * 0.391:.2f}")]
    if device.type == "cuda":
        bf16_ms = step_ms(copy.deepcopy(bsq_model), device, args.steps, "bf16")
        rows.append(("BSQ step in bf16 (ms)", f"{bf16_ms:.2f}"))

    if device.type == "cuda":
        # 391 steps an epoch, plus evaluation and frames: size the recipe to the time given,
        # a quarter pretraining, a bit over half BSQ, a fifth finetuning
        epochs = int(args.minutes * 60 / (b_ms * 391 / 1e3 * 1.25))
        pre, bsq, fine = max(2, epochs // 4), max(3, epochs * 11 // 20), max(1, epochs // 5)
        config = preset("cifar10-resnet20", dataset=args.data, device=str(device), alpha=args.alpha,
                        pretrain_epochs=pre, pretrain_milestones=(pre // 2, 3 * pre // 4),
                        bsq_epochs=bsq, requant_every=max(1, bsq // 3), bsq_milestones=(4 * bsq // 5,),
                        finetune_epochs=fine, finetune_milestones=(fine // 2,))
    else:
        config = preset("cifar10-resnet20-quick", dataset=args.data, alpha=args.alpha)
    marks = []
    start = time.perf_counter()
    print(f"recipe: {config.pretrain_epochs}+{config.bsq_epochs}+{config.finetune_epochs} epochs", flush=True)
    path = train(config, runs=args.runs, name=args.name, overwrite=True,
                 callbacks=[ProgressBar(args.name), lambda e: marks.append((e.stage, e.epoch, time.perf_counter()))])
    total = time.perf_counter() - start
    run = load_run(path)
    m = run.metrics
    walls = {}  # event to event: training, evaluation, frames and the checkpoint of one epoch
    for (stage, epoch, t), (*_, before) in zip(marks[1:], marks[:-1]):
        if epoch > 0:  # a snapshot epoch trains nothing
            walls.setdefault(stage, []).append(t - before)
    for stage in STAGES:
        rows_of = m[(m.stage == stage) & (m.epoch > 0)]
        if len(rows_of):
            rows.append((f"{stage}: epochs, median epoch (s)", f"{len(rows_of)}, {rows_of.seconds.median():.2f}"))
            if walls.get(stage):
                rows.append((f"{stage}: median wall per epoch incl. checkpoint (s)",
                             f"{statistics.median(walls[stage]):.2f}"))
    summary = run.info["summary"]
    float_acc = m[m.stage == "pretrain"].test_acc.iloc[-1] if (m.stage == "pretrain").any() else float("nan")
    rows += [("float test accuracy", f"{float_acc:.4f}"), ("after BSQ test accuracy", f"{summary['bsq_acc']:.4f}"),
             ("final test accuracy", f"{summary['test_acc']:.4f}"), ("average bits", f"{summary['avg_bits']:.3f}"),
             ("compression", f"{summary['compression']:.2f}x"), ("whole run (s)", f"{total:.0f}")]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, {config.dataset}, alpha {config.alpha:g}, run {path}")
    width = max(len(r[0]) for r in rows) + 2
    for label, value in rows:
        print(f"{label:<{width}}{value:>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
