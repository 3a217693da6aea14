"""Observation of a converted model as tidy frames: per-bit sparsity, per-layer precision, size."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from .bits import bit_table, levels, plane_norms, plane_values
from .layers import bit_layers, live_bits
from .store import BIT_COLUMNS, LAYER_COLUMNS

__all__ = ["FLOAT_BITS", "ModelSize", "size_of", "bit_sparsity", "layer_precision", "model_size"]

FLOAT_BITS = 32  # what a weight costs before quantization: the reference of every compression


@dataclass(frozen=True)
class ModelSize:
    avg_bits: float      # sum numel_l n_l / sum numel_l over the converted layers
    compression: float   # FLOAT_BITS / avg_bits (inf when every layer is empty)
    total_bits: int      # sum numel_l n_l
    numel: int           # sum numel_l

    @property
    def packed_bytes(self) -> float:
        """The weights bit-packed: total_bits / 8."""
        return self.total_bits / 8


def size_of(numel, nbits) -> ModelSize:
    """The size of layers with numel[l] weights of nbits[l] bits each (sequences or frame columns):
    the one place the size formulas live."""
    numel, nbits = np.asarray(numel, dtype=np.int64), np.asarray(nbits, dtype=np.int64)
    total, count = int((numel * nbits).sum()), int(numel.sum())
    avg = total / count if count else 0.0
    return ModelSize(avg_bits=avg, compression=FLOAT_BITS / avg if avg else float("inf"), total_bits=total,
                     numel=count)


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
    weights = [m.weight for _, m in layers]
    counts = np.array([w.nbits for w in weights])
    numel = np.array([w.shape.numel() for w in weights])
    # histograms of the integer magnitudes, all as long as the widest layer's (2^top bins);
    # hits = hist @ bit_table counts the weights with each bit set, for every layer in one product
    top = int(counts.max())
    hists, norms = [], []
    for w in weights:
        pos, neg = w.rows()
        magnitudes = plane_values(pos, neg).abs_().round_().clamp_max_(levels(w.nbits))  # |integers()|
        hists.append(torch.bincount(magnitudes.int(), minlength=2**top))
        norms.append(plane_norms(pos, neg))
    hist = torch.stack(hists).double()
    hits = (hist @ bit_table(top, hist.device)).cpu().numpy()[np.arange(top) < counts[:, None]]
    row = np.repeat(np.arange(len(layers)), counts)  # the layer of each output row
    plane = np.arange(row.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return pd.DataFrame({
        "layer": np.array([name for name, _ in layers], dtype=object)[row],
        "layer_index": row,
        "bit": np.array([w.lsb_offset for w in weights])[row] + plane,
        "nbits": np.array(live_bits(weights))[row],
        "density": hits / np.maximum(numel, 1)[row],
        "norm": torch.cat(norms).double().cpu().numpy(),
    })


@torch.no_grad()
def layer_precision(model: nn.Module) -> pd.DataFrame:
    """One row per converted layer: layer, layer_index, kind, numel, nbits (0 if empty), scale, lsb_offset."""
    layers = bit_layers(model)
    if not layers:
        return pd.DataFrame(columns=LAYER_COLUMNS)
    weights = [m.weight for _, m in layers]
    return pd.DataFrame({
        "layer": [name for name, _ in layers],
        "layer_index": np.arange(len(layers)),
        "kind": [m.kind for _, m in layers],
        "numel": np.array([w.shape.numel() for w in weights]),
        "nbits": np.array(live_bits(weights)),
        "scale": torch.stack([w.scale for w in weights]).double().cpu().numpy(),
        "lsb_offset": np.array([w.lsb_offset for w in weights]),
    })


@torch.no_grad()
def model_size(model: nn.Module) -> ModelSize:
    """Size of the converted layers: average bits per weight and compression against float32."""
    layers = layer_precision(model)
    if layers.empty:
        raise ValueError("the model has no converted layers: call convert_(model) first")
    return size_of(layers.numel, layers.nbits)
