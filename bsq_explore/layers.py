"""Weights made of bit planes (BSQ) or frozen at a precision (finetuning), and convert_ to install them."""
from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .bits import check_nbits, digits, from_bits, integer_weight, levels, plane_rows, plane_values, quantize

__all__ = ["ScaledWeight", "BitWeight", "QuantWeight", "BitLayer", "weights_up_front", "live_bits", "bit_layers",
           "replace_module", "convert_"]


class ScaledWeight(nn.Module):
    """A quantized weight with a trainable scale s > 0, stored as the Parameter log_scale.

    Why a logarithm: re-quantization rescales s by up to 2^7 when planes are dropped, and the
    gradient of a linear s grows as 1/s, so after a drop plain SGD moves s 2^14 times faster
    relative to its size; on digits that diverged to NaN for alpha >= 0.5. SGD on log s moves s
    by the same relative amount whatever its size, and keeps it positive (DESIGN: s > 0).

    Subclasses give compute(), the effective weight, and rows(): the weight as bit planes pos,
    neg, each (nbits, numel), whose plane_values are the weight in grid units before rounding.
    """

    ready: torch.Tensor | None = None  # the effective weight weights_up_front computed, inside its block

    def forward(self) -> torch.Tensor:
        return self.compute() if self.ready is None else self.ready

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().to(self.dtype)

    def values(self) -> torch.Tensor:
        """x = sum_b 2^b (pos_b - neg_b) over rows(): the weight in grid units before rounding, flattened."""
        return plane_values(*self.rows())

    def integers(self) -> torch.Tensor:
        """The integer weight the forward pass uses now: clip(round(values()), +-(2^n - 1)), int64."""
        n = levels(self.nbits)
        return self.values().round_().clamp_(-n, n).to(torch.int64).view(self.shape)

    def live_bits(self) -> int:
        """The precision it reports: nbits, or 0 when its integer weight is all zero."""
        return live_bits([self])[0]

    def set_scale_(self, scale: torch.Tensor) -> None:
        """A new log_scale Parameter; a zero scale (an all-zero weight) becomes 1, which changes nothing.

        log_scale is float64, so exp(log s) rounds back to exactly s in the weight's dtype: a
        converted layer stays bit-exact with uniform quantization.
        """
        self.dtype = scale.dtype
        scale = scale.detach().reshape(()).double()
        self.log_scale = nn.Parameter(torch.where(scale > 0, scale, torch.ones_like(scale)).log())


class BitWeight(ScaledWeight):
    """A weight tensor stored as trainable bit planes.

    Parameters: pos, neg (nbits, *shape), each entry relaxed to [0, 2], index 0 the least
    significant bit; log_scale, a scalar (scale = exp(log_scale)). lsb_offset counts the least
    significant planes dropped since conversion, so plane b carries bit b + lsb_offset of the
    original grid.
    """

    def __init__(self, weight: torch.Tensor, nbits: int, lsb_offset: int = 0):
        super().__init__()
        q, scale = integer_weight(weight, nbits)
        self.set_planes_(q, nbits, scale.to(weight.dtype), lsb_offset)

    @property
    def nbits(self) -> int:
        return self.pos.shape[0]

    @property
    def shape(self) -> torch.Size:
        return self.pos.shape[1:]

    def set_planes_(self, q: torch.Tensor, nbits: int, scale: torch.Tensor, lsb_offset: int) -> None:
        """Replace the planes by the binary digits of the integer weight q (new Parameters)."""
        pos, neg = digits(q, nbits)
        dtype = scale.dtype
        self.pos = nn.Parameter(pos.to(dtype))
        self.neg = nn.Parameter(neg.to(dtype))
        self.set_scale_(scale)
        self.lsb_offset = int(lsb_offset)

    def compute(self) -> torch.Tensor:
        return from_bits(self.pos, self.neg, self.scale)

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The trainable planes pos and neg, detached, as (nbits, numel) views."""
        return plane_rows(self.pos.detach()), plane_rows(self.neg.detach())

    def get_extra_state(self) -> dict:
        return {"lsb_offset": self.lsb_offset}

    def set_extra_state(self, state: dict) -> None:
        self.lsb_offset = int(state["lsb_offset"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Re-quantization changes the number of planes: take the shapes of the saved ones.
        for name in ("pos", "neg"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, nn.Parameter(torch.empty_like(saved, device=self.pos.device)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"nbits={self.nbits}, shape={tuple(self.pos.shape[1:])}, lsb_offset={self.lsb_offset}"


class QuantWeight(ScaledWeight):
    """A weight at a frozen precision: W = s * Q_n(clamp(w, -1, 1)), w trained as a float (STE).

    A 0-bit weight (a layer BSQ emptied) is zero whatever w and s, so it stays zero.
    """

    def __init__(self, w: torch.Tensor, scale: torch.Tensor, nbits: int, lsb_offset: int = 0):
        super().__init__()
        if nbits != 0:
            check_nbits(nbits)
        self.w = nn.Parameter(w.detach().clone())
        self.set_scale_(scale)
        self.nbits = int(nbits)
        self.lsb_offset = int(lsb_offset)

    @classmethod
    def from_integers(cls, q: torch.Tensor, scale: torch.Tensor, nbits: int, lsb_offset: int = 0) -> "QuantWeight":
        w = q.to(scale.dtype) / levels(max(nbits, 1))
        return cls(w, scale, nbits, lsb_offset)

    @property
    def shape(self) -> torch.Size:
        return self.w.shape

    def compute(self) -> torch.Tensor:
        return self.scale * quantize(self.w, self.nbits)

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The binary digits of its integer weight round(clamp(w, -1, 1) (2^n - 1)), as (nbits, numel) planes."""
        q = torch.round(self.w.detach().reshape(-1).clamp(-1, 1) * levels(self.nbits)).to(torch.int64)
        pos, neg = digits(q, self.nbits)
        return pos.to(self.w.dtype), neg.to(self.w.dtype)

    def get_extra_state(self) -> dict:
        return {"nbits": self.nbits, "lsb_offset": self.lsb_offset}

    def set_extra_state(self, state: dict) -> None:
        self.nbits = int(state["nbits"])
        self.lsb_offset = int(state["lsb_offset"])

    def extra_repr(self) -> str:
        return f"nbits={self.nbits}, shape={tuple(self.w.shape)}, lsb_offset={self.lsb_offset}"


class BitLayer(nn.Module):
    """The quantized twin of an nn.Conv2d or nn.Linear: same op, weight from a BitWeight or QuantWeight."""

    def __init__(self, module: nn.Conv2d | nn.Linear, weight: BitWeight | QuantWeight):
        super().__init__()
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros":
                raise ValueError(f"only zero-padded convolutions can be converted, not padding_mode={module.padding_mode!r}")
            self.kind, self.op = "conv", F.conv2d
            self.op_args = dict(stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups)
        else:
            self.kind, self.op, self.op_args = "linear", F.linear, {}
        self.weight = weight
        self.bias = module.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x, self.weight(), self.bias, **self.op_args)

    @property
    def numel(self) -> int:
        return self.weight.shape.numel()

    def extra_repr(self) -> str:
        return f"kind={self.kind}, " + ", ".join(f"{k}={v}" for k, v in self.op_args.items())


@contextlib.contextmanager
def weights_up_front(model: nn.Module) -> Iterator[None]:
    """Compute every converted layer's effective weight once, all together, on entering the block.

    Inside the block the layers use those weights, so wrap one forward pass, not an optimizer
    step. A training step runs faster this way (benchmarks/engine.py: the BSQ/float step ratio
    of ResNet-20 drops from about 1.10 to about 1.04): the weights are computed back to back
    from planes that are still warm, and their backward runs as one stretch at the end of
    backpropagation instead of between the convolutions.
    """
    weights = [m.weight for _, m in bit_layers(model)]
    try:
        for w in weights:
            w.ready = w.compute()
        yield
    finally:
        for w in weights:
            w.ready = None


@torch.no_grad()
def live_bits(weights: Sequence[ScaledWeight], head: int = 64) -> list[int]:
    """[w.live_bits() for w in weights], at a fraction of the cost for many weights.

    An integer weight is nonzero iff its value exceeds 1/2 in magnitude (rounding is half to
    even). A live layer nearly always shows such a weight among its first few, so the first
    `head` weights of all layers of one precision are checked together, in one product; only
    layers with none there are computed whole.
    """
    live = [False] * len(weights)
    groups = defaultdict(list)
    for i, w in enumerate(weights):
        if w.nbits and w.shape.numel():
            groups[w.nbits].append(i)
    for idx in groups.values():
        rows = [weights[i].rows() for i in idx]
        k = min(head, *(pos.shape[1] for pos, _ in rows))
        x = plane_values(torch.stack([pos[:, :k] for pos, _ in rows], 1), torch.stack([neg[:, :k] for _, neg in rows], 1))
        for i, found in zip(idx, (x.abs().amax(1) > 0.5).tolist()):
            live[i] = found
    live = [found or bool((w.values().abs() > 0.5).any()) for found, w in zip(live, weights)]
    return [w.nbits if found else 0 for found, w in zip(live, weights)]


def bit_layers(model: nn.Module) -> list[tuple[str, BitLayer]]:
    """The converted layers of model, in network (registration) order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BitLayer)]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def convert_(model: nn.Module, nbits: int = 8,
             filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """Swap every nn.Conv2d and nn.Linear (at any depth) for its bit-plane twin, in place.

    Each weight becomes nbits planes holding exactly its uniform symmetric nbits-bit quantization.

    Args:
        model: any nn.Module holding conv or linear layers (not a bare layer: wrap it in nn.Sequential).
        nbits: the precision every converted layer starts at, 1..MAX_BITS.
        filter_fn: filter_fn(module, name) -> True for the layers to convert (torchao style); all when None.

    Returns:
        model, converted.

    Example:
        >>> model = convert_(resnet20(act_bits=4), nbits=8, filter_fn=not_shortcut)
        >>> stats.layer_precision(model).nbits.unique()
        array([8])
    """
    check_nbits(nbits)
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and (filter_fn is None or filter_fn(m, name))]
    for name, m in targets:
        if not name:
            raise ValueError("convert_ needs a model that contains layers, not a bare layer: wrap it in nn.Sequential")
        replace_module(model, name, BitLayer(m, BitWeight(m.weight.detach(), nbits)))
    return model
