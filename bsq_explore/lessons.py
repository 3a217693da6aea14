"""Tables that teach one weight tensor's bits: its digits, its planes' occupancy, its error per precision."""
from __future__ import annotations

import pandas as pd
import torch

from .bits import from_bits, levels, plane_values, to_bits

__all__ = ["digit_table", "plane_occupancy", "reconstruction_errors"]


def digit_table(w: torch.Tensor, nbits: int, count: int = 8) -> pd.DataFrame:
    """The first count weights of w at nbits: the weight, its integer q, q's digits in the pos and the
    neg planes (MSB first), the (nbits+1)-bit two's complement of q for contrast, and the weight
    the planes give back (scale q / (2^n - 1))."""
    flat = w.detach().float().reshape(-1)
    pos, neg, scale = to_bits(flat, nbits)  # (nbits, N)
    q = plane_values(pos, neg).round().long()
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
    ints = plane_values(pos, neg).round().long()
    twos = ints % 2 ** (nbits + 1)
    n = max(len(ints), 1)
    rows = [dict(bit=nbits, pos=float("nan"), neg=float("nan"), sign_magnitude=float("nan"),
                 twos_complement=float(((twos >> nbits) & 1).sum()) / n)]
    for b in range(nbits - 1, -1, -1):
        rows.append(dict(bit=b, pos=float(pos[b].sum()) / n, neg=float(neg[b].sum()) / n,
                         sign_magnitude=float((pos[b] + neg[b]).sum()) / n,
                         twos_complement=float(((twos >> b) & 1).sum()) / n))
    return pd.DataFrame(rows)


def reconstruction_errors(w: torch.Tensor, max_bits: int = 8) -> pd.DataFrame:
    """How far the n-bit quantization of w is from w, for n = 1..max_bits."""
    rows = []
    for n in range(1, max_bits + 1):
        pos, neg, scale = to_bits(w, n)
        err = (from_bits(pos, neg, scale) - w).abs()
        rows.append(dict(nbits=n, max_abs_error=err.max().item(), rmse=err.pow(2).mean().sqrt().item(),
                         bound=scale.item() / levels(n) / 2))
    return pd.DataFrame(rows)
