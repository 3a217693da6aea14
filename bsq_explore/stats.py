"""Observation of a converted model as tidy frames: per-bit sparsity, per-layer precision, size."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from .bits import bit_table, levels
from .layers import bit_layers

BIT_COLUMNS = ["layer", "layer_index", "bit", "nbits", "density", "norm"]
LAYER_COLUMNS = ["layer", "layer_index", "kind", "numel", "nbits", "scale", "lsb_offset"]


@dataclass(frozen=True)
class ModelSize:
    avg_bits: float     # sum numel_l n_l / sum numel_l over the converted layers
    compression: float  # 32 / avg_bits (inf when every layer is empty)
    total_bits: int     # sum numel_l n_l
    numel: int          # sum numel_l


@torch.no_grad()
def bit_sparsity(model: nn.Module) -> pd.DataFrame:
    """One row per converted layer and plane.

    bit: significance on the conversion grid (plane index + lsb_offset); density: fraction of
    weights whose integer weight (the one the forward pass uses now) has that bit set; norm:
    the group L2 norm of the plane (pos and neg together), the quantity the Lasso drives to 0;
    nbits: the layer's precision (0 once its integer weight is all zero).
    """
    layers = bit_layers(model)
    if not layers:
        return pd.DataFrame(columns=BIT_COLUMNS)
    counts, hits, norms, zeros = [], [], [], []
    for _, m in layers:
        n = m.weight.nbits
        # a histogram of magnitudes turns per-bit counts into a tiny (2^n, n) product
        hist = torch.bincount(m.weight.integers().abs_().view(-1), minlength=levels(n) + 1).double()
        counts.append(n), hits.append(hist @ bit_table(n, hist.device))
        norms.append(m.weight.plane_norms()), zeros.append(hist[0])
    numel = [m.numel for _, m in layers]
    alive = [z < size for z, size in zip(torch.stack(zeros).tolist(), numel)]  # live_bits, read off the histogram
    nbits = [c * a for c, a in zip(counts, alive)]
    per_plane = torch.tensor([max(size, 1) for size, c in zip(numel, counts) for _ in range(c)], dtype=torch.float64)
    return pd.DataFrame({
        "layer": [name for (name, _), c in zip(layers, counts) for _ in range(c)],
        "layer_index": [i for i, c in enumerate(counts) for _ in range(c)],
        "bit": [m.weight.lsb_offset + b for (_, m), c in zip(layers, counts) for b in range(c)],
        "nbits": [n for n, c in zip(nbits, counts) for _ in range(c)],
        "density": (torch.cat(hits).cpu() / per_plane).numpy(),
        "norm": torch.cat(norms).double().cpu().numpy(),
    })


@torch.no_grad()
def layer_precision(model: nn.Module) -> pd.DataFrame:
    """One row per converted layer: layer, layer_index, kind, numel, nbits (0 if empty), scale, lsb_offset."""
    layers = bit_layers(model)
    if not layers:
        return pd.DataFrame(columns=LAYER_COLUMNS)
    scales = torch.stack([m.weight.scale.detach() for _, m in layers]).double().cpu().tolist()
    return pd.DataFrame({
        "layer": [name for name, _ in layers],
        "layer_index": range(len(layers)),
        "kind": [m.kind for _, m in layers],
        "numel": [m.numel for _, m in layers],
        "nbits": [m.weight.live_bits() for _, m in layers],
        "scale": scales,
        "lsb_offset": [m.weight.lsb_offset for _, m in layers],
    })


@torch.no_grad()
def model_size(model: nn.Module) -> ModelSize:
    """Size of the converted layers: average bits per weight and compression against float32."""
    layers = bit_layers(model)
    if not layers:
        raise ValueError("the model has no converted layers: call convert_(model) first")
    numel = sum(m.numel for _, m in layers)
    total = sum(m.numel * m.weight.live_bits() for _, m in layers)
    avg = total / numel
    return ModelSize(avg_bits=avg, compression=32 / avg if avg else float("inf"), total_bits=total, numel=numel)
