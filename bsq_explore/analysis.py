"""Questions asked of runs, answered as frames: when planes died, final precisions, what-if models."""
from __future__ import annotations

import threading

import pandas as pd
import torch

from .axes import epoch_labels
from .bits import levels
from .catalog import finished_bsq
from .config import preset
from .runs import Run
from .stats import FLOAT_BITS, size_of

__all__ = ["death_epochs", "deaths_by_layer", "sweep_layers", "VERDICT_COLUMNS", "verdict", "verdict_sentence",
           "TWIN_COLUMNS", "twins", "twins_sentence", "featured", "reduce_precision", "export_size",
           "WHAT_IF_IMAGES", "WhatIf", "layer_weights", "size_table", "paper_comparison"]


def death_epochs(bits: pd.DataFrame) -> pd.DataFrame:
    """When each bit plane of each layer was removed for good.

    One row per (layer, bit) that ever existed: layer, layer_index, bit, born (first step with
    the plane), died (first step after its last appearance, or NaN if alive at the end) and
    died_at ('bsq 20' style label of that step, or '' if alive).
    """
    steps = bits.drop_duplicates("step").sort_values("step")
    last_step = steps.step.iloc[-1] if len(steps) else None
    label = dict(zip(steps.step, epoch_labels(steps)))
    following = dict(zip(steps.step.iloc[:-1], steps.step.iloc[1:]))
    life = bits.groupby(["layer_index", "layer", "bit"], as_index=False).agg(born=("step", "min"), last=("step", "max"))
    died = life["last"].map(lambda s: following.get(s) if s != last_step else None)
    life["died"] = pd.to_numeric(died, errors="coerce")
    life["died_at"] = life.died.map(lambda s: label.get(s, "") if pd.notna(s) else "")
    return (life.drop(columns="last").sort_values(["layer_index", "bit"], ascending=[True, False])
            .reset_index(drop=True))


def deaths_by_layer(bits: pd.DataFrame) -> pd.DataFrame:
    """death_epochs in one row per layer (network order), short enough for a screen: layer, alive
    (its planes still there at the end) and died ('7 at bsq 3, 6 at bsq 6': each removed bit, top
    first, and the epoch that removed it; '' when none)."""
    life = death_epochs(bits)
    rows = [dict(layer=layer, alive=int(part.died_at.eq("").sum()),
                 died=", ".join(f"{b} at {at}" for b, at in zip(part.bit, part.died_at) if at))
            for (_, layer), part in life.groupby(["layer_index", "layer"], sort=True)]
    return pd.DataFrame(rows, columns=["layer", "alive", "died"])


def sweep_layers(runs: list[Run]) -> pd.DataFrame:
    """Final per-layer bits of BSQ runs, with their alpha: the input of plots.layer_precision_bars."""
    frames = [r.final_layers().assign(alpha=r.info["config"]["alpha"], run=r.name) for r in runs]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["alpha", "layer", "nbits"])


VERDICT_COLUMNS = ["baseline", "bits", "acc", "best_run", "best_bits", "best_acc", "gain",
                   "smallest_run", "smallest_bits", "smallest_acc", "size_ratio"]
METHODS = {"bsq": "BSQ", "hessian": "Hessian"}  # a sweep table's kinds of mixed-precision run, as sentences name them


def verdict(table: pd.DataFrame, kind: str = "bsq", within: float = 0.005) -> pd.DataFrame:
    """One method's runs (kind: "bsq", or "hessian" for the twins) against each uniform baseline of a
    sweep table (runs.sweep_table), finished runs only.

    One row per uniform k-bit run: the most accurate run of the method of at most k average bits
    (best_*) and gain, its accuracy minus the baseline's in percentage points (negative: uniform
    wins); then the method's smallest run within `within` (0.005: half a point) of the baseline's
    accuracy (smallest_*) and size_ratio, k over its average bits (above 1: the method's run is
    smaller). None where no run qualifies. Accuracies are final test accuracies, as fractions.

    Example:
        >>> verdict(sweep_table(list_runs(EXAMPLES), "fashion"), "hessian").smallest_run.tolist()
        ['fashion-h0.1', 'fashion-h0.02', 'fashion-h0.02', 'fashion-h0.02', 'fashion-h0.02']
    """
    if kind not in METHODS:
        raise ValueError(f"kind must be one of {', '.join(METHODS)}, got {kind!r}")
    done = table[table.status == "finished"]
    runs = done[done.kind == kind].sort_values(["test_acc", "avg_bits"], ascending=[False, True])
    rows = []
    for base in done[done.kind == "uniform"].sort_values("nbits").itertuples():
        bits, acc = base.avg_bits, base.test_acc
        best = runs[runs.avg_bits <= bits + 1e-9].head(1)
        close = runs[runs.test_acc >= acc - within - 1e-12].sort_values(["avg_bits", "test_acc"],
                                                                        ascending=[True, False]).head(1)
        row = dict(baseline=base.name, bits=bits, acc=acc)
        for prefix, pick in (("best", best), ("smallest", close)):
            hit = pick.iloc[0] if len(pick) else None
            row.update({f"{prefix}_run": hit["name"] if hit is not None else None,
                        f"{prefix}_bits": hit.avg_bits if hit is not None else None,
                        f"{prefix}_acc": hit.test_acc if hit is not None else None})
        row["gain"] = 100 * (row["best_acc"] - acc) if row["best_acc"] is not None else None
        row["size_ratio"] = bits / row["smallest_bits"] if row["smallest_bits"] else None
        rows.append(row)
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


TWIN_COLUMNS = ["alpha", "bsq", "bsq_bits", "bsq_test_acc", "hessian", "hessian_bits", "hessian_test_acc", "gain"]


def twins(table: pd.DataFrame) -> pd.DataFrame:
    """BSQ against its Hessian twin at the same size, from a sweep table (runs.sweep_table), finished
    runs only: one row per alpha with both, their average bits and final test accuracies, and gain,
    BSQ's accuracy minus the twin's in percentage points (negative: the Hessian allocation wins)."""
    done = table[table.status == "finished"]
    pairs = done[done.kind == "bsq"].merge(done[done.kind == "hessian"], on="alpha", suffixes=("_b", "_h"))
    rows = pd.DataFrame(dict(alpha=pairs.alpha, bsq=pairs.name_b, bsq_bits=pairs.avg_bits_b, bsq_test_acc=pairs.test_acc_b,
                             hessian=pairs.name_h, hessian_bits=pairs.avg_bits_h, hessian_test_acc=pairs.test_acc_h,
                             gain=100 * (pairs.test_acc_b - pairs.test_acc_h)), columns=TWIN_COLUMNS)
    return rows.sort_values("alpha").reset_index(drop=True)


def twins_sentence(pairs: pd.DataFrame) -> str:
    """twins(table) in one plain sentence: how often BSQ's learned bits beat the chosen ones at one size."""
    if pairs.empty:
        return ""
    wins = int((pairs.gain > 0).sum())
    return (f"At the same size, BSQ is more accurate than the Hessian-chosen bits in {wins} of {len(pairs)} "
            f"pair{'s' * (len(pairs) != 1)}; BSQ minus Hessian is {pairs.gain.mean():+.1f} points on average.")


def verdict_sentence(table: pd.DataFrame, kind: str = "bsq") -> str:
    """verdict(table, kind) in one plain sentence: which uniform baselines the method (BSQ, or the
    Hessian twins) matches within half a point with fewer bits (and how many times fewer), and which not.

    Args:
        table: a sweep table (runs.sweep_table).
        kind: "bsq" or "hessian", as for verdict.
    """
    rows = verdict(table, kind).sort_values("bits")
    method = METHODS[kind]
    if rows.empty:
        return f"This sweep has no finished uniform baseline to compare {method} with."
    if not ((table.kind == kind) & (table.status == "finished")).any():
        return f"This sweep has no finished {method} run yet to compare with its uniform baselines."
    wins = rows[rows.size_ratio.astype(float) > 1]
    rest = rows.drop(wins.index)
    bits = lambda part: _listed([f"{b:g}-" for b in part.bits])[:-1] + "-bit"
    parts = []
    if len(wins):
        parts.append(f"{method} is as accurate as uniform {bits(wins)} quantization (within half a point) and "
                     f"{_listed([f'{r:.2f}x' for r in wins.size_ratio])} smaller")
    if len(rest):
        parts.append(f"no {method} run is as accurate as uniform {bits(rest)} with fewer bits")
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def featured(table: pd.DataFrame) -> str:
    """The run to open first: from the sweep on the hardest problem (its float model the least
    accurate: real data before digits), the most compressed BSQ run within 2 points of that float
    model; without sweeps, the most compressed BSQ run within 2 points of the best; else the first run."""
    if "sweep" not in table:  # one sweep's table (catalog.sweep_table)
        table = table.assign(sweep="")
    done = finished_bsq(table).dropna(subset=["test_acc", "compression"])
    if done.empty:
        return table.name.iloc[0]
    floats = table[(table.kind == "float") & (table.status == "finished") & table.sweep.isin(done.sweep)]
    floats = floats.dropna(subset=["test_acc"])
    if len(floats):
        hardest = floats.sort_values("test_acc").iloc[0]
        done, best = done[done.sweep == hardest.sweep], hardest.test_acc
    else:
        best = table.test_acc.max()
    good = done[done.test_acc >= best - 0.02]
    return (good if len(good) else done).sort_values("compression").name.iloc[-1]


def reduce_precision(exported: dict, nbits: dict[str, int]) -> dict:
    """A copy of an export() with some layers at fewer bits: the low bits are rounded away.

    q' = round(q / 2^k) clipped to 2^(n-k) - 1 and s' = s 2^k (2^(n-k) - 1) / (2^n - 1), so each
    weight moves to the nearest point of the coarser grid. 0 bits empties the layer.
    """
    layers = {}
    for name, spec in exported["layers"].items():
        n, new = spec["nbits"], nbits.get(name, spec["nbits"])
        if not 0 <= new <= n:
            raise ValueError(f"layer {name} has {n} bits; it can keep 0 to {n}, not {new}")
        spec = dict(spec)
        if new < n:
            k = n - new
            q = spec["q"].to(torch.int64)
            top = levels(new) if new else 0
            spec["q"] = (torch.round(q / 2**k).clamp(-top, top)).to(spec["q"].dtype)
            spec["scale"] = spec["scale"] * 2**k * top / levels(n) if new else 0.0
            spec["nbits"] = new if spec["q"].any() else 0
        layers[name] = spec
    return dict(exported, layers=layers)


def export_size(exported: dict) -> dict:
    """avg_bits, compression and packed bytes of an export's converted layers."""
    specs = exported["layers"].values()
    s = size_of([spec["q"].numel() for spec in specs], [spec["nbits"] for spec in specs])
    return dict(avg_bits=s.avg_bits, compression=s.compression, packed_bytes=s.packed_bytes)


# What-if scores a sample: a slider move re-scores a ResNet-20 in at most 0.25 s on 2 cores (benchmarks/app.py), and
# one standard error is 1.3 points at 90 %; the page offers a score on every test image on demand. Both score in
# the batches the run's own evaluation used (train.EVAL_BATCH): quantized activations scale by a batch's maximum
WHAT_IF_IMAGES = 500


class WhatIf:
    """A finished run's quantized model, re-scored with fewer bits in chosen layers, on a fixed
    sample of its test images (images=0: all of them).

    When the images fit one evaluation batch, it keeps the input of each step of the forward pass
    (models.steps; about 0.2 GB for 500 CIFAR images through a ResNet-20) and re-runs only the steps
    from the first changed layer: a slider on a ResNet-20's last stage re-runs 4 of its 11 steps. The
    scores are those of train.evaluate (under autocast to dtype: bfloat16 for a sample on a CPU that
    has it), bit for bit.
    """

    def __init__(self, run: Run, images: int = WHAT_IF_IMAGES):
        from .data import load_test
        from .export import load_quantized
        from .models import build_model, steps
        from .train import EVAL_BATCH

        self.exported = run.read_model()
        self.data = load_test(run.config, run.info.get("data"), images)
        if images and self.data.test_x.dim() == 4:  # a slider waits on a sample's score: channels-last convolutions
            # are 20 % faster there; they round differently (an image in 10,000), so a score on every image does not
            self.data.test_x = self.data.test_x.contiguous(memory_format=torch.channels_last)
        self.model = load_quantized(build_model(run.config, self.data), self.exported).eval()
        # a sample's score is an estimate (its standard error is points): on a CPU that computes bfloat16
        # natively its convolutions and matmuls run in it, 1.7x faster on a ResNet-20 (2 of 500 images change
        # class); all the test images are scored in float32, the run's own score exactly
        self._chained = len(self.data.test_y) <= EVAL_BATCH  # else keeping every step's input would cost gigabytes
        native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        self.dtype = torch.bfloat16 if images and native and self._chained else torch.float32
        self.bits = {name: spec["nbits"] for name, spec in self.exported["layers"].items()}
        self._loaded = dict(self.bits)  # the bits the model holds now
        self._steps = steps(self.model)
        self._inputs = [self.data.test_x]  # each step's input under the loaded bits, as far as it was computed
        self._scores = {}  # kept bits per layer -> evaluate(): moving a slider back costs nothing
        self._lock = threading.Lock()  # the app shares one WhatIf between visitors: one model, one scorer at a time

    @property
    def images(self) -> int:
        return len(self.data.test_y)

    @property
    def in_bf16(self) -> bool:
        """Whether its convolutions and matmuls run in bfloat16 (a sample, on a CPU that computes it natively)."""
        return self.dtype == torch.bfloat16

    def evaluate(self, nbits: dict[str, int] | None = None) -> dict:
        """Test accuracy and size with nbits[layer] bits kept (others as trained)."""
        from .export import load_layers_

        nbits = nbits or {}
        key = tuple(nbits.get(name, n) for name, n in self.bits.items())
        with self._lock:
            if key not in self._scores:
                exported = reduce_precision(self.exported, nbits)
                changed = [name for name, bits in zip(self.bits, key) if bits != self._loaded[name]]
                load_layers_(self.model, {name: exported["layers"][name] for name in changed})
                self.model.eval()  # the new weight modules start in training mode
                self._loaded.update(zip(self.bits, key))
                self._scores[key] = dict(test_acc=self._accuracy(changed), **export_size(exported))
            return self._scores[key]

    def _accuracy(self, changed: list[str]) -> float:
        """train.evaluate of the loaded model; in one batch, from the first step that holds a changed layer."""
        from .models import find_step
        from .train import evaluate

        if not self._chained:
            return evaluate(self.model, self.data.test_x, self.data.test_y)
        first = min((find_step(self._steps, layer) for layer in changed), default=len(self._steps))
        del self._inputs[first + 1:]
        with torch.no_grad(), torch.autocast("cpu", self.dtype, enabled=self.dtype != torch.float32):
            for _, step in self._steps[len(self._inputs) - 1:]:
                self._inputs.append(step(self._inputs[-1]))
        logits = self._inputs[-1]
        return float((logits.argmax(1) == self.data.test_y).sum()) / self.images

    @property
    def trained(self) -> dict:
        """evaluate() of the model as trained."""
        return self.evaluate()

    def change(self, nbits: dict[str, int]) -> dict:
        """evaluate(nbits), with acc_change and bits_change: how far test_acc and avg_bits moved from
        the model as trained."""
        now = self.evaluate(nbits)
        return dict(now, acc_change=now["test_acc"] - self.trained["test_acc"],
                    bits_change=now["avg_bits"] - self.trained["avg_bits"])


def layer_weights(run: Run) -> dict[str, torch.Tensor]:
    """Every conv and linear weight of a run, in network order: the float weights of its float
    model when it has one, else its final model's quantized weights (scale q / (2^n - 1))."""
    state = run.read_float()
    if state is not None:
        return {k.removesuffix(".weight"): v.float() for k, v in state.items() if k.endswith(".weight") and v.dim() > 1}
    return {name: spec["scale"] * spec["q"].float() / levels(spec["nbits"]) if spec["nbits"] else spec["q"].float() * 0
            for name, spec in run.read_model()["layers"].items()}


def size_table(exported: dict) -> pd.DataFrame:
    """Bytes of each converted layer of an export.export: as float32, as stored (the integer dtype of
    q) and bit-packed (numel * nbits / 8), and a total row whose nbits is the average."""
    rows = []
    for name, spec in exported["layers"].items():
        numel, nbits = spec["q"].numel(), spec["nbits"]
        rows.append(dict(layer=name, nbits=float(nbits), numel=numel, float32_bytes=numel * FLOAT_BITS // 8,
                         stored_bytes=numel * spec["q"].element_size(),
                         packed_bytes=size_of([numel], [nbits]).packed_bytes))
    table = pd.DataFrame(rows)
    total = table[["numel", "float32_bytes", "stored_bytes", "packed_bytes"]].sum()
    total = dict(layer="total", nbits=size_of(table.numel, table.nbits).avg_bits, **total)
    table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    return table.astype(dict(numel="int64", float32_bytes="int64", stored_bytes="int64"))


# Yang et al. (ICLR 2021), ResNet-20 on CIFAR-10 with 4-bit activations: the trade-off they report
# (their recipe is the preset cifar10-resnet20)
_PAPER = dict(source="paper (Yang et al. 2021)", avg_bits=FLOAT_BITS / 14, compression=14.0, test_acc=0.92)


def paper_comparison(run: Run) -> pd.DataFrame:
    """The run's alpha, activation bits, epochs, average bits, compression and test accuracy next to
    the paper's reported ResNet-20 / CIFAR-10 trade-off."""
    c, s = run.info["config"], run.summary
    columns = ["source", "model", "act_bits", "alpha", "epochs", "avg_bits", "compression", "test_acc"]
    mine = dict(source=run.name, model=c["model"], act_bits=c["act_bits"], alpha=c["alpha"],
                epochs=f"{c['pretrain_epochs']}+{c['bsq_epochs']}+{c['finetune_epochs']}",
                avg_bits=s.get("avg_bits"), compression=s.get("compression"), test_acc=s.get("test_acc"))
    recipe = preset("cifar10-resnet20")
    paper = dict(_PAPER, model=recipe.model, act_bits=recipe.act_bits, alpha=recipe.alpha,
                 epochs=f"{recipe.pretrain_epochs}+{recipe.bsq_epochs}+{recipe.finetune_epochs}")
    return pd.DataFrame([paper, mine])[columns]
