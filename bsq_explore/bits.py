"""Pure tensor math of bit planes: to_bits, from_bits, the STE quantizer and plane norms."""
from __future__ import annotations

import functools

import torch

from .config import MAX_BITS

__all__ = ["levels", "check_nbits", "quantize", "integer_weight", "digits", "to_bits", "plane_values", "from_bits",
           "plane_norms", "bit_table", "plane_rows"]


def levels(nbits: int) -> int:
    """Largest magnitude an nbits-bit integer weight can take: 2**nbits - 1."""
    return 2**nbits - 1


def check_nbits(nbits: int) -> int:
    if isinstance(nbits, bool) or not isinstance(nbits, int) or not 1 <= nbits <= MAX_BITS:
        raise ValueError(f"nbits must be an integer from 1 to {MAX_BITS}, got {nbits!r}")
    return nbits


def _check_float(t: torch.Tensor, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {t.dtype}")


def quantize(x: torch.Tensor, nbits: int) -> torch.Tensor:
    """Q_n(clamp(x, -1, 1)) on the symmetric grid k / (2**n - 1), straight-through gradient.

    The value is exactly the rounded one (q + (x - x.detach()) adds an exact zero), so a
    converted layer reproduces uniform quantization bit for bit; the gradient is identity.
    A 0-bit weight is zero.
    """
    if nbits == 0:
        return x * 0
    n = levels(nbits)
    q = torch.round(x.detach().clamp(-1, 1) * n) / n
    return q + (x - x.detach())


def integer_weight(w: torch.Tensor, nbits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform symmetric quantization of w: (q, scale) with q integer in [-(2^n-1), 2^n-1], w ~ scale*q/(2^n-1)."""
    _check_float(w, "weight")
    check_nbits(nbits)
    w = w.detach()
    if w.dtype in (torch.float16, torch.bfloat16):  # |w| / s * (2^n - 1) overflows or rounds off a level in them
        w = w.float()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight holds NaN or inf values; cannot quantize it")
    scale = w.abs().amax() if w.numel() else w.new_zeros(())
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w.abs() / safe * levels(nbits)) * torch.sign(w)
    return q.to(torch.int64), scale


def digits(q: torch.Tensor, nbits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary digits of a signed integer tensor as (pos, neg) planes (nbits, *q.shape), LSB first."""
    shifts = torch.arange(nbits, device=q.device).view(-1, *([1] * q.dim()))
    bits = (q.abs().unsqueeze(0) >> shifts) & 1  # (nbits, *S)
    return bits * (q > 0), bits * (q < 0)


def to_bits(w: torch.Tensor, nbits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split w into bit planes: pos, neg of shape (nbits, *w.shape) and a scalar scale = max|w|.

    from_bits(*to_bits(w, n)) is exactly the uniform symmetric n-bit quantization of w.
    The sign lives in which of the two planes holds the digits, so every plane is >= 0.
    An all-zero w gives all-zero planes and scale 0.
    """
    q, scale = integer_weight(w, nbits)
    pos, neg = digits(q, nbits)
    return pos.to(w.dtype), neg.to(w.dtype), scale.to(w.dtype)


def plane_values(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """x = sum_b 2^b (pos_b - neg_b): the integer-domain value the planes encode (shape S)."""
    if pos.dtype in (torch.float16, torch.bfloat16):  # they cannot hold 2^16 - 1 exactly
        pos, neg = pos.float(), neg.float()
    powers = _powers(pos.shape[0], pos.device, pos.dtype)
    # two mat-vecs, the second accumulating into the first: no (nbits, *S) temporary for pos - neg
    return torch.addmv(torch.mv(plane_rows(pos).t(), powers), plane_rows(neg).t(), powers, alpha=-1).view(pos.shape[1:])


def from_bits(pos: torch.Tensor, neg: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Effective weight W = s * Q_n(clamp(x / (2^n - 1), -1, 1)), with x = plane_values(pos, neg).

    Clamp and rounding are straight-through, so dW/dpos_b = s 2^b / (2^n - 1) and
    dW/dneg_b = -s 2^b / (2^n - 1).
    """
    _check_float(pos, "pos")
    _check_float(neg, "neg")
    if pos.dtype != neg.dtype:
        raise TypeError(f"pos and neg must share a dtype, got {pos.dtype} and {neg.dtype}")
    if pos.shape != neg.shape or pos.dim() == 0:
        raise ValueError(f"pos and neg must share a shape (nbits, *weight_shape), got {tuple(pos.shape)} and {tuple(neg.shape)}")
    check_nbits(pos.shape[0])
    dtype = pos.dtype
    if dtype in (torch.float16, torch.bfloat16):  # they cannot hold 2^16 - 1 exactly
        pos, neg = pos.float(), neg.float()
    return _FromBits.apply(pos, neg, torch.as_tensor(scale, dtype=pos.dtype, device=pos.device)).to(dtype)


class _FromBits(torch.autograd.Function):
    """from_bits as one autograd node, with a backward written for it.

    Forward quantizes in the integer domain (one clamp and round, no rescaling back and forth),
    so W is exactly scale * (q / n), the same float operations as uniform quantization.
    Backward: dW/dx = s / n (straight through), dx/dpos_b = 2^b = -dx/dneg_b: one broadcast
    multiply per side. Autograd through the mat-vecs and the STE arithmetic would take six
    nodes per layer and an outer product through a rank-1 matrix product, about 3x slower on a
    CPU. The plane gradients come back as fresh tensors, so autograd adds bit_lasso's in place.
    """

    @staticmethod
    def forward(ctx, pos: torch.Tensor, neg: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.nbits = pos.shape[0]
        n = levels(ctx.nbits)
        with torch.autocast(pos.device.type, enabled=False):  # mixed precision would round x off its integers
            q = plane_values(pos, neg).clamp_(-n, n).round_()
        ctx.save_for_backward(q, scale)
        return scale * (q / n)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        q, scale = ctx.saved_tensors
        n = levels(ctx.nbits)
        grad_scale = (grad * q / n).sum_to_size(scale.shape) if ctx.needs_input_grad[2] else None
        grad_x = (grad * (scale / n)).unsqueeze(0)
        column = _powers(ctx.nbits, grad.device, grad.dtype).view(-1, *[1] * q.dim())
        return column * grad_x, -column * grad_x, grad_scale


def plane_norms(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Group L2 norm of each bit plane, pos and neg together: (nbits,)."""
    norm = torch.linalg.vector_norm
    return torch.hypot(norm(plane_rows(pos), dim=1), norm(plane_rows(neg), dim=1))


@functools.lru_cache(maxsize=None)
def _powers(nbits: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return 2.0 ** torch.arange(nbits, device=device, dtype=dtype)


@functools.lru_cache(maxsize=None)
def bit_table(nbits: int, device: torch.device) -> torch.Tensor:
    """(2^n, n) float64 table: row v holds the binary digits of v, LSB first."""
    values = torch.arange(2**nbits, device=device).unsqueeze(1)
    return ((values >> torch.arange(nbits, device=device)) & 1).double()


def plane_rows(planes: torch.Tensor) -> torch.Tensor:
    """(nbits, *S) -> (nbits, prod S) (a view of contiguous planes), also for scalar and empty weights."""
    return planes if planes.dim() == 2 else planes.reshape(planes.shape[0], planes.shape[1:].numel())
