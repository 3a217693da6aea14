"""Engine benchmarks: BSQ step vs float step on ResNet-20 (CPU), bf16 vs fp32 steps, and the cost of
the per-epoch frames.

Run by hand: .venv/bin/python benchmarks/engine.py [--steps N]   (about two minutes)
Targets (issue 3): median BSQ/float step ratio <= 1.10; bit_sparsity + layer_precision <= 5 ms.
Targets (issue 24, this machine): a bf16 float or finetune step >= 1.8x faster than fp32 (ratio <= 0.56), a bf16
BSQ step >= 1.4x faster (ratio <= 0.71). Ratios are medians of steps interleaved in one process.
"""
import argparse
import copy
import statistics
import time

import torch

from bsq_explore.bsq import freeze_
from bsq_explore.config import preset
from bsq_explore.layers import convert_
from bsq_explore.models import not_shortcut, resnet20
from bsq_explore.stats import bit_sparsity, layer_precision
from bsq_explore.train import COMPUTE_DTYPES, laid_out, optimizer, train_step


def step_fn(model, alpha, precision="fp32"):
    """The training step of train_epoch, with the training code's optimizer and image layout."""
    config = preset("cifar10-resnet20-cpu", precision=precision)
    opt = optimizer(model, config, lr=0.05)
    return lambda x, y: train_step(model, opt, laid_out(x, config), y, alpha, COMPUTE_DTYPES[precision])


def interleaved(a, b, x, y, steps):
    """Times of a and b over steps interleaved pairs, in alternating order so that drifts in machine
    load hit both alike and neither always runs first; returns (times of a, times of b)."""
    for _ in range(3):
        a(x, y), b(x, y)
    times_a, times_b = [], []
    for i in range(steps):
        if i % 2:
            times_a.append(timed(a, x, y)), times_b.append(timed(b, x, y))
        else:
            times_b.append(timed(b, x, y)), times_a.append(timed(a, x, y))
    return times_a, times_b


def median_ratio(num, den):
    return statistics.median(n / d for n, d in zip(num, den))


def timed(fn, *args):
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    float_model = resnet20(act_bits=4)
    bsq_model = convert_(copy.deepcopy(float_model), 8, filter_fn=not_shortcut)
    floats, bsqs = interleaved(step_fn(float_model, 0.0), step_fn(bsq_model, 5e-3), x, y, args.steps)
    float32s, float16s = interleaved(step_fn(copy.deepcopy(float_model), 0.0),
                                     step_fn(copy.deepcopy(float_model), 0.0, "bf16"), x, y, args.steps)
    bsq32s, bsq16s = interleaved(step_fn(copy.deepcopy(bsq_model), 5e-3),
                                 step_fn(copy.deepcopy(bsq_model), 5e-3, "bf16"), x, y, args.steps)
    tuned = freeze_(copy.deepcopy(bsq_model))
    tune32s, tune16s = interleaved(step_fn(tuned, 0.0), step_fn(copy.deepcopy(tuned), 0.0, "bf16"), x, y, args.steps)
    sparsity, precision = [], []
    for _ in range(100):
        sparsity.append(timed(bit_sparsity, bsq_model)), precision.append(timed(layer_precision, bsq_model))
    frames = [a + b for a, b in zip(sparsity, precision)]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ResNet-20, batch 128, 4-bit activations")
    print(f"{'measure':<44}{'median':>12}{'target':>10}")
    print(f"{'float step (s)':<44}{statistics.median(floats):>12.4f}")
    print(f"{'BSQ step (s)':<44}{statistics.median(bsqs):>12.4f}")
    print(f"{'BSQ / float step ratio':<44}{median_ratio(bsqs, floats):>12.3f}{'<= 1.10':>10}")
    print(f"{'float step bf16/fp32':<44}{median_ratio(float16s, float32s):>12.3f}{'<= 0.56':>10}")
    print(f"{'BSQ step bf16/fp32':<44}{median_ratio(bsq16s, bsq32s):>12.3f}{'<= 0.71':>10}")
    print(f"{'finetune step bf16/fp32':<44}{median_ratio(tune16s, tune32s):>12.3f}{'<= 0.56':>10}")
    print(f"{'bit_sparsity (ms)':<44}{statistics.median(sparsity) * 1e3:>12.2f}")
    print(f"{'layer_precision (ms)':<44}{statistics.median(precision) * 1e3:>12.2f}")
    print(f"{'bit_sparsity + layer_precision (ms)':<44}{statistics.median(frames) * 1e3:>12.2f}{'<= 5':>10}")


if __name__ == "__main__":
    main()
