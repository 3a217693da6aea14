"""Sensitivity benchmark (issue 28): Hessian traces of the shipped CIFAR-10 ResNet-20's float model.

Run by hand: .venv/bin/python benchmarks/sensitivity.py [--samples 8,32]   (about 2 minutes)
Target (issue 28, this machine): sensitivity.layer_traces within 5 minutes at the samples the shipped
sweep uses (`--hessian 32`, on sweep.TRACE_IMAGES training images, fp32, the process's threads). The
images are seeded random ones of CIFAR-10's shape: a Hessian-vector product costs the same whatever the
images show, and reading the JPEG folder (minutes) is not what this measures.
"""
import argparse
import time

import torch

from bsq_explore.models import convert_filter, resnet20
from bsq_explore.paths import EXAMPLES
from bsq_explore.runs import load_run
from bsq_explore.sensitivity import layer_traces
from bsq_explore.sweep import TRACE_IMAGES

TARGET_S = 300


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", default="8,32", help="Hutchinson samples to time, comma-separated")
    args = parser.parse_args()
    run = load_run(EXAMPLES / "cifar10-float")
    config = run.config
    model = resnet20(act_bits=config.act_bits)  # CIFAR-10's 10 classes
    model.load_state_dict(run.read_float())  # the shipped float.pt every twin of the sweep is measured from
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(TRACE_IMAGES, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (TRACE_IMAGES,), generator=generator)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ResNet-20 (cifar10-float), "
          f"{TRACE_IMAGES} images, batch {config.batch_size}")
    print(f"{'samples':>8}{'layers':>8}{'seconds':>10}{'s / sample':>12}{'target (s)':>12}")
    for samples in (int(s) for s in args.samples.split(",")):
        start = time.perf_counter()
        traces = layer_traces(model, x, y, samples, config.batch_size, convert_filter(config), config.seed)
        seconds = time.perf_counter() - start
        print(f"{samples:>8}{len(traces):>8}{seconds:>10.1f}{seconds / samples:>12.2f}{f'<= {TARGET_S}':>12}")


if __name__ == "__main__":
    main()
