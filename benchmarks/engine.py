"""Engine benchmarks: BSQ step vs float step on ResNet-20 (CPU), and the cost of the per-epoch frames.

Run by hand: .venv/bin/python benchmarks/engine.py [--steps N]   (about a minute)
Targets (issue 3): median BSQ/float step ratio <= 1.10; bit_sparsity + layer_precision <= 5 ms.
"""
import argparse
import copy
import statistics
import time

import torch

from bsq_explore.config import preset
from bsq_explore.layers import convert_
from bsq_explore.models import not_shortcut, resnet20
from bsq_explore.stats import bit_sparsity, layer_precision
from bsq_explore.train import optimizer, train_step


def step_fn(model, alpha):
    """The training step of train_epoch, with the training code's optimizer."""
    opt = optimizer(model, preset("cifar10-resnet20"), lr=0.05)
    return lambda x, y: train_step(model, opt, x, y, alpha)


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
    float_step, bsq_step = step_fn(float_model, 0.0), step_fn(bsq_model, 5e-3)
    for _ in range(3):
        float_step(x, y), bsq_step(x, y)
    ratios, floats, bsqs = [], [], []
    for i in range(args.steps):  # interleaved, so drifts in machine load hit both alike,
        if i % 2:                # in alternating order, so neither always runs first
            f, b = timed(float_step, x, y), timed(bsq_step, x, y)
        else:
            b, f = timed(bsq_step, x, y), timed(float_step, x, y)
        floats.append(f), bsqs.append(b), ratios.append(b / f)
    sparsity, precision = [], []
    for _ in range(100):
        sparsity.append(timed(bit_sparsity, bsq_model)), precision.append(timed(layer_precision, bsq_model))
    frames = [a + b for a, b in zip(sparsity, precision)]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ResNet-20, batch 128, 4-bit activations")
    print(f"{'measure':<44}{'median':>12}{'target':>10}")
    print(f"{'float step (s)':<44}{statistics.median(floats):>12.4f}")
    print(f"{'BSQ step (s)':<44}{statistics.median(bsqs):>12.4f}")
    print(f"{'BSQ / float step ratio':<44}{statistics.median(ratios):>12.3f}{'<= 1.10':>10}")
    print(f"{'bit_sparsity (ms)':<44}{statistics.median(sparsity) * 1e3:>12.2f}")
    print(f"{'layer_precision (ms)':<44}{statistics.median(precision) * 1e3:>12.2f}")
    print(f"{'bit_sparsity + layer_precision (ms)':<44}{statistics.median(frames) * 1e3:>12.2f}{'<= 5':>10}")


if __name__ == "__main__":
    main()
