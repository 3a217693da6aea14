"""The BSQ steps: bit-level group Lasso, clamping, re-quantization with precision adjustment, freeze_."""
from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from .bits import levels, plane_norms, plane_values
from .layers import BitWeight, QuantWeight, bit_layers

__all__ = ["bit_weights", "bit_lasso", "clamp_bits_", "requantize_", "freeze_"]

_EPS = 1e-12  # inside the root: an all-zero plane gets a zero gradient instead of NaN


def bit_weights(model: nn.Module) -> list[tuple[str, BitWeight]]:
    """(layer name, BitWeight) of every layer still stored as bit planes, network order."""
    return [(name, m.weight) for name, m in bit_layers(model) if isinstance(m.weight, BitWeight)]


def bit_lasso(model: nn.Module) -> torch.Tensor:
    """R = sum_l (numel_l n_l / sum_k numel_k) sum_b sqrt(||pos_lb||^2 + ||neg_lb||^2).

    The memory weighting makes a plane of a big layer cost more than one of a small layer,
    so BSQ spends its precision where it is cheap.
    """
    weights = [w for _, w in bit_weights(model)]
    if not weights:
        raise ValueError("the model has no bit-plane layers: call convert_(model) first")
    total = sum(w.shape.numel() for w in weights)
    return sum(w.shape.numel() * w.nbits / total * _GroupNorms.apply(w.pos, w.neg).sum() for w in weights)


class _GroupNorms(torch.autograd.Function):
    """r_b = sqrt(||pos_b||^2 + ||neg_b||^2 + eps) per plane, with dr_b/dpos_b = pos_b / r_b.

    The values and gradients of autograd through the norms, in one pass over the planes
    instead of three, and as fresh tensors (not views), so that autograd adds them to the
    cross-entropy's plane gradients in place rather than into a third tensor.
    """

    @staticmethod
    def forward(ctx, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        r = (plane_norms(pos, neg).square_() + _EPS).sqrt_()
        ctx.save_for_backward(pos, neg, r)
        return r

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos, neg, r = ctx.saved_tensors
        k = (grad / r).view(-1, *[1] * (pos.dim() - 1))
        return pos * k, neg * k


@torch.no_grad()
def clamp_bits_(model: nn.Module) -> None:
    """Put every plane entry back into [0, 2] (call after each optimizer step)."""
    planes = [p for _, w in bit_weights(model) for p in (w.pos, w.neg)]
    if planes:
        torch._foreach_clamp_min_(planes, 0.0)
        torch._foreach_clamp_max_(planes, 2.0)


def _zero_run(alive: list[bool], limit: int) -> int:
    """How many leading entries of alive are False, at most limit."""
    run = 0
    while run < limit and not alive[run]:
        run += 1
    return run


@torch.no_grad()
def requantize_(model: nn.Module, max_bits: int = 8) -> pd.DataFrame:
    """Round the planes of every BitWeight to binary digits and adjust each layer's precision.

    Per layer: q = round(x), x = sum_b 2^b (pos_b - neg_b). If |q| overflows 2^n - 1 the layer
    grows one bit (below max_bits) or q is clipped (at max_bits). Then all-zero most significant
    planes are dropped, then all-zero least significant ones (raising lsb_offset), keeping n >= 1.
    The scale is rescaled at every step so s q / (2^n - 1) is unchanged: the effective weight
    moves by at most half a grid step from the unclamped s x / (2^n - 1), unless clipped.
    New Parameters replace the old: rebuild the optimizer afterwards (train.requantize_and_rebuild_).

    Args:
        model: a model convert_ made; its layers still stored as bit planes are re-quantized.
        max_bits: a layer whose integers overflow grows one bit up to this, then clips.

    Returns:
        One row per layer: layer, nbits_before, nbits_after, grown, dropped_msb, dropped_lsb,
        clipped (weights clipped at max_bits), lsb_offset.

    Example:
        >>> table = requantize_(model, max_bits=8)  # every few BSQ epochs
        >>> table.query("nbits_after < nbits_before")  # the layers that lost planes
    """
    rows = []
    for name, w in bit_weights(model):
        n0 = n = w.nbits
        q = torch.round(plane_values(w.pos, w.neg)).to(torch.int64)
        grown = clipped = 0
        if int(q.abs().max()) > levels(n):
            if n < max_bits:
                n, grown = n + 1, 1  # planes are <= 2, so |q| <= 2^(n+1) - 2: one bit always suffices
            else:
                clipped = int((q.abs() > levels(n)).sum())
                q = q.clamp(-levels(n), levels(n))
        mag = q.abs()
        alive = [bool(mag.bitwise_and(1 << b).any()) for b in range(n)]  # LSB first
        drop_msb = _zero_run(alive[::-1], n - 1)
        drop_lsb = _zero_run(alive, n - drop_msb - 1)
        n1 = n - drop_msb - drop_lsb
        # W = s q / L(n0) = s' (q >> k) / L(n1) with s' = s 2^k L(n1) / L(n0): the low k bits are zero.
        scale = w.scale * (2**drop_lsb * levels(n1) / levels(n0))
        q = torch.sign(q) * (mag >> drop_lsb)
        w.set_planes_(q, n1, scale, w.lsb_offset + drop_lsb)
        rows.append(dict(layer=name, nbits_before=n0, nbits_after=n1, grown=grown, dropped_msb=drop_msb,
                         dropped_lsb=drop_lsb, clipped=clipped, lsb_offset=w.lsb_offset))
    return pd.DataFrame(rows, columns=["layer", "nbits_before", "nbits_after", "grown", "dropped_msb",
                                       "dropped_lsb", "clipped", "lsb_offset"])


@torch.no_grad()
def freeze_(model: nn.Module) -> nn.Module:
    """Turn every bit-plane layer into a fixed-precision QuantWeight layer, outputs unchanged.

    The precision is the layer's plane count, or 0 when its integer weight is all zero.
    """
    for name, w in bit_weights(model):
        x = (plane_values(w.pos, w.neg) / levels(w.nbits)).clamp(-1, 1).to(w.scale.dtype)
        nbits = w.live_bits()
        frozen = QuantWeight(x if nbits else torch.zeros_like(x), w.scale, nbits, w.lsb_offset)
        model.get_submodule(name).weight = frozen
    return model
