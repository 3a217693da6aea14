"""Pipeline benchmarks (issue 4): whole digits runs and sweeps, per-epoch frame writing, and CPU
training throughput on the CIFAR-10 image folder against a torchvision DataLoader.

Run by hand: .venv/bin/python benchmarks/pipeline.py [--cifar ../shared/datasets/cifar10] [--batches 8]
"""
import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from bsq_explore import data
from bsq_explore.config import preset
from bsq_explore.layers import convert_
from bsq_explore.models import not_shortcut, resnet20
from bsq_explore.paths import REPO
from bsq_explore.stats import bit_sparsity, layer_precision, model_size
from bsq_explore.store import FRAME_COLUMNS, RunFolder
from bsq_explore.sweep import sweep
from bsq_explore.train import optimizer, train, train_step

ROOT = REPO


def wall(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bsq_step(model):
    """The training step of train_epoch at the paper's alpha, with the training code's optimizer."""
    opt = optimizer(model, preset("cifar10-resnet20"), lr=0.1)
    return lambda x, y: train_step(model, opt, x, y, 5e-3)


def throughput(cifar: Path, batches: int) -> tuple[float, float]:
    """Images per second of BSQ training fed by (ours) in-memory tensors with batched augmentation,
    and (theirs) an ImageFolder DataLoader with per-sample PIL crop/flip/ToTensor/Normalize."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    n = batches * 128
    torch.manual_seed(0)
    base = convert_(resnet20(act_bits=4), 8, filter_fn=not_shortcut)
    ours_model, theirs_model = base, copy.deepcopy(base)
    step_ours, step_theirs = bsq_step(ours_model), bsq_step(theirs_model)

    def ours():
        ds = data.load(f"folder:{cifar}", train_subset=n, test_subset=10)  # loading is part of the cost
        g = torch.Generator().manual_seed(0)
        for x, y in data.batches(ds.train_x, ds.train_y, 128, g, augmented=True):
            step_ours(x, y)

    def theirs():
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))])
        folder = ImageFolder(str(cifar / "train"), transform=tf)
        subset = torch.utils.data.Subset(folder, torch.randperm(len(folder))[:n].tolist())
        for x, y in torch.utils.data.DataLoader(subset, batch_size=128, shuffle=True, num_workers=2):
            step_theirs(x, y)

    t_theirs, t_ours = wall(theirs), wall(ours)
    return n / t_ours, n / t_theirs


def resnet_history(epochs: int):
    """A converted ResNet-20 and frames of `epochs` BSQ epochs shaped like a real run's."""
    torch.manual_seed(0)
    model = convert_(resnet20(act_bits=4), 8, filter_fn=not_shortcut)
    keys = dict(stage="bsq", epoch=1, step=1)
    bits = bit_sparsity(model).assign(**keys)[FRAME_COLUMNS["bits"]]
    layers = layer_precision(model).assign(**keys)[FRAME_COLUMNS["layers"]]
    metric = pd.DataFrame([dict(stage="bsq", epoch=1, step=1, train_loss=1.0, reg_loss=1.0, train_acc=0.5,
                                test_acc=0.5, avg_bits=8.0, compression=4.0, lr=0.1, seconds=1.0)])
    history = {k: pd.concat([f.assign(epoch=e, step=e) for e in range(epochs)], ignore_index=True)
               for k, f in (("bits", bits), ("layers", layers), ("metrics", metric))}
    return model, history, metric


def frame_cost(epochs: int = 650) -> tuple[float, float]:
    """Seconds to observe a ResNet-20 and rewrite its frames after epoch 650, and one CPU BSQ
    epoch of CIFAR-shaped data (391 batches of 128, from the median of a few timed steps)."""
    model, history, metric = resnet_history(epochs - 1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = RunFolder(Path(tmp), {}, history)

        def one_epoch():
            k = dict(stage="bsq", epoch=epochs, step=epochs)
            b = bit_sparsity(model).assign(**k)[FRAME_COLUMNS["bits"]]
            lp = layer_precision(model).assign(**k)[FRAME_COLUMNS["layers"]]
            model_size(model)
            folder.append("bits", b), folder.append("layers", lp), folder.append("metrics", metric.assign(**k))
            for key in folder.frames:  # measure the 650th epoch every time, not a growing history
                folder.frames[key] = folder.frames[key].iloc[:-len(b) if key == "bits" else -len(lp) if key == "layers" else -1]
        writes = statistics.median(wall(one_epoch) for _ in range(5))
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    step = bsq_step(model)
    step(x, y)
    epoch = statistics.median(wall(lambda: step(x, y)) for _ in range(5)) * 391
    return writes, epoch


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cifar", type=Path, default=ROOT.parent / "shared" / "datasets" / "cifar10")
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run_s = wall(lambda: train(preset("digits-mlp", alpha=0.3), runs=tmp, name="one"))
        rows.append(("digits-mlp run, whole (s)", f"{run_s:.1f}", "<= 20"))
        sweep_s = wall(lambda: sweep("digits-mlp", [0, 0.05, 0.1, 0.2, 0.3, 0.4], jobs=2, runs=tmp, name="sw",
                                     uniform_bits=()))
        rows.append(("digits sweep, 6 alphas, --jobs 2 (s)", f"{sweep_s:.1f}", "<= 90"))
    writes, epoch = frame_cost()
    rows.append(("frames at epoch 650, ResNet-20 (s)", f"{writes:.3f}", ""))
    rows.append(("ResNet-20 BSQ epoch, CIFAR-shaped, CPU (s)", f"{epoch:.1f}", ""))
    rows.append(("frames / epoch time, CPU (%)", f"{100 * writes / epoch:.2f}", "<= 5"))
    rows.append(("frames / 4 s GPU epoch target (%)", f"{100 * writes / 4:.2f}", "<= 5"))
    if args.cifar.is_dir():
        ours, theirs = throughput(args.cifar, args.batches)
        rows.append(("BSQ training, in-memory batches (img/s)", f"{ours:.0f}", ""))
        rows.append(("BSQ training, DataLoader + PIL (img/s)", f"{theirs:.0f}", ""))
        rows.append(("throughput ratio ours / DataLoader", f"{ours / theirs:.2f}", ">= 1.3"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'measure':<46}{'value':>10}{'target':>10}")
    for name, value, target in rows:
        print(f"{name:<46}{value:>10}{target:>10}")


if __name__ == "__main__":
    main()
