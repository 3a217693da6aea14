"""Helpers and widget callbacks of the tutorial notebooks: knob values in, figures and frames out."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from . import analysis, plots
from .bits import from_bits, levels, to_bits
from .runs import Run, list_runs, load_run, read_info, sweep_table

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "data" / "examples"
SHARED_CIFAR10 = REPO.parent / "shared" / "datasets" / "cifar10"
# Yang et al. (ICLR 2021), ResNet-20 on CIFAR-10 with 4-bit activations: the trade-off they report
PAPER = dict(source="paper (Yang et al. 2021)", model="resnet20", act_bits=4, alpha=5e-3, avg_bits=32 / 14,
             compression=14.0, test_acc=0.92)


def quick() -> bool:
    """True when BSQ_QUICK is set to anything but '', '0', 'false' or 'no': the notebooks then train
    for a handful of epochs (CI runs them this way)."""
    return os.environ.get("BSQ_QUICK", "").strip().lower() not in ("", "0", "false", "no")


def runs_root() -> Path:
    """Where the notebooks write new runs: $BSQ_RUNS, else data/runs of this checkout (whatever the
    notebook's working folder). The shipped examples are read-only teaching material."""
    root = Path(os.environ["BSQ_RUNS"]) if os.environ.get("BSQ_RUNS") else REPO / "data" / "runs"
    if root.resolve() == EXAMPLES.resolve():
        raise ValueError(f"{root} holds the shipped examples; point BSQ_RUNS at another folder")
    return root


# --- 01: the bits of a weight ------------------------------------------------------------------

def layer_weights(run_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every conv and linear weight of a run, in network order: the float weights of float.pt when
    the run has them, else model.pt's quantized weights (scale q / (2^n - 1))."""
    run_dir = Path(run_dir)
    if (run_dir / "float.pt").exists():
        state = torch.load(run_dir / "float.pt", weights_only=True)
        return {k.removesuffix(".weight"): v.float() for k, v in state.items() if k.endswith(".weight") and v.dim() > 1}
    exported = torch.load(run_dir / "model.pt", weights_only=True)
    return {name: spec["scale"] * spec["q"].float() / levels(spec["nbits"]) if spec["nbits"] else spec["q"].float() * 0
            for name, spec in exported["layers"].items()}


def planes_figure(weights: dict[str, torch.Tensor], layer: str, nbits: int, max_side: int = 64):
    """plots.bit_planes_image of one layer's weight (its top-left max_side x max_side corner)."""
    w = weights[layer]
    fig = plots.bit_planes_image(w, nbits, max_side)
    fig.update_layout(title=f"{layer} {tuple(w.shape)}: " + fig.layout.title.text)
    return fig


def error_figure(w: torch.Tensor, nbits: int, max_bits: int = 8):
    """Reconstruction error of w against precision (analysis.reconstruction_errors) on a log scale,
    with the half-step bound scale / (2 (2^n - 1)) and the chosen nbits marked."""
    import plotly.graph_objects as go

    errors = analysis.reconstruction_errors(w, max_bits)
    fig = go.Figure()
    for column, dash in (("max_abs_error", None), ("rmse", None), ("bound", "dot")):
        fig.add_trace(go.Scatter(x=errors.nbits, y=errors[column], name=column, mode="lines+markers",
                                 line=dict(dash=dash)))
    fig.add_vline(x=nbits, line_color="crimson", annotation_text=f"{nbits} bits")
    fig.update_layout(title="reconstruction error against bits", xaxis=dict(title="nbits", dtick=1),
                      yaxis=dict(title="error (weight units)", type="log"), height=360,
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def digit_table(w: torch.Tensor, nbits: int, count: int = 8) -> pd.DataFrame:
    """The first count weights of w at nbits: the weight, its integer q, q's digits in the pos and the
    neg planes (MSB first), the (nbits+1)-bit two's complement of q for contrast, and the weight
    the planes give back (scale q / (2^n - 1))."""
    flat = w.detach().float().reshape(-1)
    pos, neg, scale = to_bits(flat, nbits)  # (nbits, N)
    q = ((pos - neg) * (2 ** torch.arange(nbits)).view(-1, 1)).sum(0).long()
    back = from_bits(pos, neg, scale)
    rows = []
    for i in range(min(count, len(flat))):
        rows.append(dict(weight=float(flat[i]), q=int(q[i]),
                         pos="".join(str(int(pos[b, i])) for b in range(nbits - 1, -1, -1)),
                         neg="".join(str(int(neg[b, i])) for b in range(nbits - 1, -1, -1)),
                         twos_complement=format(int(q[i]) % 2 ** (nbits + 1), f"0{nbits + 1}b"),
                         quantized=float(back[i])))
    return pd.DataFrame(rows)


def plane_occupancy(w: torch.Tensor, nbits: int) -> pd.DataFrame:
    """How many weights use each plane, MSB first: in BSQ's pos and neg planes (sign-magnitude: a
    plane is used by a weight whose |q| has that digit) and in an (nbits+1)-bit two's complement
    code, where every negative weight fills the top planes with ones. Bit nbits is that code's
    sign bit; BSQ has no such plane (the sign is which plane holds the digits)."""
    pos, neg, _ = to_bits(w.detach().float().reshape(-1), nbits)  # (nbits, N)
    ints = ((pos - neg) * (2 ** torch.arange(nbits)).view(-1, 1)).sum(0).long()
    twos = ints % 2 ** (nbits + 1)
    n = max(len(ints), 1)
    rows = [dict(bit=nbits, pos=float("nan"), neg=float("nan"), sign_magnitude=float("nan"),
                 twos_complement=float(((twos >> nbits) & 1).sum()) / n)]
    for b in range(nbits - 1, -1, -1):
        rows.append(dict(bit=b, pos=float(pos[b].sum()) / n, neg=float(neg[b].sum()) / n,
                         sign_magnitude=float((pos[b] + neg[b]).sum()) / n,
                         twos_complement=float(((twos >> b) & 1).sum()) / n))
    return pd.DataFrame(rows)


# --- 02 and 05: watching a run train -----------------------------------------------------------

def live_heatmap(value: str = "density") -> tuple[object, Callable]:
    """A plotly FigureWidget and a training callback (train.train(callbacks=[...])) that redraws it
    from each Event's bit frame: layers x bits, as plots.bit_heatmap draws that epoch.
    Float (pretraining) epochs only update the title: there are no bit planes yet."""
    import plotly.graph_objects as go

    widget = go.FigureWidget(go.Heatmap(z=[], colorscale="Viridis", zmin=0, zmax=1))
    widget.update_layout(title="bit planes: waiting for the first epoch", height=300, plot_bgcolor=plots.REMOVED,
                         margin=dict(l=10, r=10, t=50, b=10))

    def update(event) -> None:
        if event.bits is None or event.bits.empty:
            why = "float, no planes yet" if event.bits is None else "no plane left"
            widget.layout.title.text = f"bit planes: {event.stage} {event.epoch} ({why})"
            return
        fig = plots.bit_heatmap(event.bits, value=value)
        layout = fig.layout.to_plotly_json()
        layout.pop("template", None)  # the widget has the same default one; re-validating it costs 0.3 s
        with widget.batch_update():
            widget.data[0].update(fig.data[0].to_plotly_json())
            widget.update_layout(layout, title_text=f"bit planes, {event.stage} {event.epoch}")
    return widget, update


def live_curves() -> tuple[object, Callable]:
    """A FigureWidget of test accuracy and average bits (right axis) against epochs, and the training
    callback that appends each Event's point."""
    import plotly.graph_objects as go

    widget = go.FigureWidget([go.Scatter(x=[], y=[], name="test acc", mode="lines+markers"),
                              go.Scatter(x=[], y=[], name="avg bits", yaxis="y2", line_shape="hv")])
    widget.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10), title="test accuracy and average bits",
                         xaxis_title="epoch (since the run began)", yaxis=dict(title="test acc", range=[0, 1.02]),
                         yaxis2=dict(title="avg bits", overlaying="y", side="right", range=[0, 33]))

    def update(event) -> None:
        acc, bits = widget.data
        with widget.batch_update():
            acc.x, acc.y = (*acc.x, event.step), (*acc.y, event.metrics["test_acc"])
            bits.x, bits.y = (*bits.x, event.step), (*bits.y, event.metrics["avg_bits"])
    return widget, update


# --- 03: a sweep -------------------------------------------------------------------------------

def shipped_sweeps() -> pd.DataFrame:
    """The sweeps in data/examples, one row each: its name, model, dataset, runs and float accuracy."""
    table = list_runs(EXAMPLES)
    rows = []
    for name in sorted(table.sweep.dropna().unique()):
        part = table[table.sweep == name]
        base = part[part.kind == "float"]
        config = read_info(Path(base.path.iloc[0]))["config"] if len(base) else {}
        rows.append(dict(sweep=name, model=config.get("model"), dataset=config.get("dataset"), runs=len(part),
                         float_acc=base.test_acc.iloc[0] if len(base) else None))
    return pd.DataFrame(rows, columns=["sweep", "model", "dataset", "runs", "float_acc"])


def sweep_runs(root: str | os.PathLike, sweep: str) -> dict[float, Run]:
    """The finished BSQ runs of a sweep under root, by alpha (ascending)."""
    table = sweep_table(list_runs(root), sweep)
    done = table[(table.kind == "bsq") & (table.status == "finished")].sort_values("alpha")
    return {float(a): load_run(Path(root) / name) for a, name in zip(done.alpha, done.name)}


def run_caption(run: Run) -> str:
    """'alpha 0.3: 96.7 % test accuracy, 2.75 bits (11.6x)', or 'collapsed' when nothing is left."""
    s, alpha = run.info.get("summary") or {}, run.info["config"]["alpha"]
    if s.get("avg_bits") is None:
        return f"alpha {alpha:g}: {run.info['status']}"
    size = "collapsed: no weight left" if s["avg_bits"] == 0 else f"{s['avg_bits']:.2f} bits ({s['compression']:.1f}x)"
    return f"alpha {alpha:g}: {100 * s['test_acc']:.1f} % test accuracy, {size}"


def alpha_heatmap(runs_by_alpha: dict[float, Run], alpha: float, value: str = "density"):
    """The last bit heatmap of the sweep's run at alpha, titled with its accuracy and size."""
    run = runs_by_alpha[alpha]
    fig = plots.bit_heatmap(run.bits, value=value)
    fig.update_layout(title=f"{run.name}: {run_caption(run)}")
    return fig


# --- 04: one run, its export -------------------------------------------------------------------

def load_model(run: Run):
    """The run's final quantized model (model.pt loaded into its architecture) and its dataset."""
    from .bsq import load_quantized
    from .config import BSQConfig
    from .data import load
    from .train import build_model

    config = BSQConfig.from_dict(run.info["config"])
    ds = load(config.dataset, config.train_subset, config.test_subset)
    model = build_model(config, ds)
    load_quantized(model, torch.load(run.path / "model.pt", weights_only=True))
    return model, ds


def size_table(exported: dict) -> pd.DataFrame:
    """Bytes of each converted layer of a bsq.export: as float32, as stored (the integer dtype of
    q) and bit-packed (numel * nbits / 8), and a total row whose nbits is the average."""
    rows = [dict(layer=name, nbits=float(spec["nbits"]), numel=spec["q"].numel(), float32_bytes=4 * spec["q"].numel(),
                 stored_bytes=spec["q"].numel() * spec["q"].element_size(),
                 packed_bytes=spec["q"].numel() * spec["nbits"] / 8)
            for name, spec in exported["layers"].items()]
    table = pd.DataFrame(rows)
    total = table[["numel", "float32_bytes", "stored_bytes", "packed_bytes"]].sum()
    total = dict(layer="total", nbits=8 * total.packed_bytes / total.numel if total.numel else 0.0, **total)
    table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    return table.astype(dict(numel="int64", float32_bytes="int64", stored_bytes="int64"))


# --- 05: CIFAR-10 ------------------------------------------------------------------------------

def synthetic_image_folder(root: str | os.PathLike, classes: int = 10, train_per_class: int = 26,
                           test_per_class: int = 13, size: int = 32, seed: int = 0) -> Path:
    """A tiny stand-in for CIFAR-10 in the folder layout (root/train/<class>/*.png, root/test/...):
    each class is a noisy image of its own colour and stripe direction, so it is learnable."""
    import numpy as np
    from PIL import Image

    root, rng = Path(root), np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for c in range(classes):
        colour = rng.uniform(40, 215, 3)
        stripes = np.sin((xx * np.cos(np.pi * c / classes) + yy * np.sin(np.pi * c / classes)) / 2.0)
        for part, count in (("train", train_per_class), ("test", test_per_class)):
            folder = root / part / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = colour + 30 * stripes[..., None] + rng.normal(0, 25, (size, size, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


def cifar10_source(fallback: str | os.PathLike | None = None) -> tuple[str, str]:
    """(dataset, note): the shared CIFAR-10 image folder when this checkout has one beside it, else a
    synthetic stand-in made under fallback (default: a new temporary folder), with a note that says which."""
    if (SHARED_CIFAR10 / "train").is_dir() and (SHARED_CIFAR10 / "test").is_dir():
        return f"folder:{SHARED_CIFAR10}", f"Using the CIFAR-10 image folder {SHARED_CIFAR10}."
    import tempfile

    root = synthetic_image_folder(fallback or Path(tempfile.mkdtemp(prefix="bsq-synthetic-cifar10-")))
    return f"folder:{root}", (f"{SHARED_CIFAR10} does not exist, so a tiny synthetic 10-class image folder "
                              f"({root}) stands in: the pipeline runs, but its numbers say nothing about CIFAR-10.")


def paper_comparison(run: Run) -> pd.DataFrame:
    """The run's alpha, activation bits, epochs, average bits, compression and test accuracy next to
    the paper's reported ResNet-20 / CIFAR-10 trade-off."""
    c, s = run.info["config"], run.info.get("summary") or {}
    columns = ["source", "model", "act_bits", "alpha", "epochs", "avg_bits", "compression", "test_acc"]
    mine = dict(source=run.name, model=c["model"], act_bits=c["act_bits"], alpha=c["alpha"],
                epochs=f"{c['pretrain_epochs']}+{c['bsq_epochs']}+{c['finetune_epochs']}",
                avg_bits=s.get("avg_bits"), compression=s.get("compression"), test_acc=s.get("test_acc"))
    return pd.DataFrame([dict(PAPER, epochs="float+350+300"), mine])[columns]
