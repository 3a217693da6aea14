"""Hessian-trace sensitivity (HAWQ-V2/V3 style, DESIGN 2c): per-layer traces, quantization perturbations, bit allocation."""
from __future__ import annotations

import contextlib
import functools
import itertools
import math
import operator
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .bits import integer_weight, levels
from .config import MAX_BITS
from .models import QuantReLU6
from .store import TRACE_COLUMNS

__all__ = ["layer_traces", "perturbation", "allocate_bits", "allocation_frame"]


def layer_traces(model: nn.Module, x: torch.Tensor, y: torch.Tensor, samples: int = 32, batch_size: int = 128,
                 filter_fn: Callable[[nn.Module, str], bool] | None = None, seed: int = 0) -> pd.DataFrame:
    """Hutchinson estimate of tr(H_l), the Hessian of the mean cross-entropy on (x, y) with respect to each layer's weight.

    Each sample draws, per batch b of x, one Rademacher vector v over all layers; one Hessian-vector product
    (double backprop) gives v_l . (H v)_l for every layer l, unbiased for tr(H_ll) as E[v_l v_k^T] = 0 for
    l != k. A sample is sum_b (n_b / N) v_b^T H_b v_b: the trace of the loss averaged over all of x, with
    independent vectors per batch (less variance than one shared v). Eval mode: batch norm uses its running
    statistics and nothing is updated; the model comes back as it came. A trace may be negative (non-convex loss).

    Args:
        model: a float model; its nn.Conv2d and nn.Linear layers are measured (QuantReLU6 straight through).
        x, y: a fixed set of training inputs and class labels, the same length.
        samples: Hutchinson samples (one Rademacher vector per batch each), >= 1.
        batch_size: inputs per forward pass (memory), >= 1.
        filter_fn: filter_fn(module, name) -> True for the layers to measure (as convert_); all when None.
        seed: seeds the vectors: the same seed gives the same frame.

    Returns:
        One row per layer in network order: layer, layer_index, numel, trace (the mean over samples),
        trace_std (its standard error; NaN for one sample), samples.

    Example:
        >>> model = resnet20(act_bits=4)  # a trained float model in practice
        >>> traces = layer_traces(model, x[:512], y[:512], samples=32, filter_fn=not_shortcut)
        >>> traces[["layer", "trace", "trace_std"]].head(2)
    """
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear)) and (filter_fn is None or filter_fn(m, name))]
    _check_inputs(x, y, samples, batch_size, layers)
    weights = [m.weight for _, m in layers]
    generator = torch.Generator().manual_seed(seed)
    estimates = torch.zeros(samples, len(layers), dtype=torch.float64)
    with _measuring(model, weights):
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            loss = F.cross_entropy(model(xb.to(weights[0].device)), yb.to(weights[0].device))
            # one first-order graph per batch, reused by every sample's Hessian-vector product
            grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
            for s in range(samples):
                estimates[s] += len(xb) / len(x) * _quadratic_forms(weights, grads, generator)
    return _trace_frame(layers, estimates)


def perturbation(w: torch.Tensor, nbits: int) -> float:
    """||Q_b(W) - W||^2 with the kit's symmetric quantizer (bits.integer_weight: W ~ scale * q / (2^b - 1)).

    Args:
        w: a float weight tensor.
        nbits: 1..MAX_BITS, or 0 for an emptied layer (all zero: the error is ||W||^2).

    Returns:
        The squared error as a float, computed in float64.

    Example:
        >>> perturbation(torch.tensor([1.0, 0.4]), 1)  # Q_1 gives [1, 0]
        0.16000000000000003
    """
    w = w.detach().cpu()  # float64 on any device (MPS has none)
    if type(nbits) is int and nbits == 0:
        return float(w.double().pow(2).sum())
    q, scale = integer_weight(w, nbits)
    return float((scale.double() * q.double() / levels(nbits) - w.double()).pow(2).sum())


def allocate_bits(traces: pd.DataFrame, weights: nn.Module | Mapping[str, torch.Tensor], budget: float,
                  choices: Iterable[int] = range(1, 9)) -> dict[str, int]:
    """Bits per layer minimising sum_l Omega_l(b_l) = sum_l tr(H_l) / numel_l * ||Q_{b_l}(W_l) - W_l||^2,
    subject to sum_l numel_l b_l <= budget * sum_l numel_l, solved exactly (a dynamic program).

    A negative trace (Hutchinson noise, or a locally concave loss) counts as 0: a layer whose
    quantization the estimate says costs nothing. Among optimal allocations the smallest is
    returned, so such a layer gets min(choices).

    Args:
        traces: a frame with columns layer, numel, trace (layer_traces' frame).
        weights: the float model the traces were measured on, or a mapping layer name -> weight.
        budget: average bits per weight, from min(choices) to max(choices).
        choices: the precisions a layer may take, each 0..MAX_BITS (0: the layer is emptied).

    Returns:
        {layer: bits}, in the frame's row order.

    Example:
        >>> allocate_bits(layer_traces(model, x, y, filter_fn=not_shortcut), model, budget=3.5)
        {'conv1': 6, 'layer1.0.conv1': 4, ...}
    """
    choices = _check_choices(choices)
    if not choices[0] <= budget <= choices[-1]:  # NaN fails too
        raise ValueError(f"budget must be from {choices[0]} to {choices[-1]} average bits, got {budget!r}")
    names, numel, trace = _check_table(traces)
    costs = [_costs(_weight(weights, name), n, t, choices) for name, n, t in zip(names, numel, trace)]
    # budget * total is a float: forgive its last-digit rounding (3.3 * 10 = 32.999...)
    capacity = math.floor(budget * sum(numel) * (1 + 1e-12))
    return dict(zip(names, _knapsack(costs, numel, choices, capacity)))


def allocation_frame(bits: Mapping[str, int]) -> pd.DataFrame:
    """An allocation ({layer: bits}, network order) as a frame like Run.final_layers: layer, layer_index, nbits."""
    return pd.DataFrame(dict(layer=list(bits), layer_index=range(len(bits)), nbits=list(bits.values())))


def _check_inputs(x: torch.Tensor, y: torch.Tensor, samples: int, batch_size: int, layers: list) -> None:
    for what, value in (("samples", samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if len(x) == 0:
        raise ValueError("x and y are empty: the traces need at least one training example")
    if not layers:
        raise ValueError("no layer to measure: the model has no nn.Conv2d or nn.Linear that filter_fn accepts")


def _ste_relu6(bits: int, x: torch.Tensor) -> torch.Tensor:
    """QuantReLU6's eval forward (batch-max scale) in plain autograd: the same value (to rounding) and the same
    straight-through gradient (relu6's mask), but twice differentiable, with the zero curvature the STE implies."""
    a = F.relu6(x)
    top = a.detach().amax().clamp_min(1e-8)
    n = levels(bits)
    return a + (torch.round(a.detach() / top * n) / n * top - a.detach())


@contextlib.contextmanager
def _measuring(model: nn.Module, weights: list[torch.Tensor]) -> Iterator[None]:
    """The model as double backprop needs it, restored on exit: eval mode, measured weights requiring grad, and
    QuantReLU6 twice differentiable (its backward is once_differentiable: a second backprop would silently skip it)."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [w.requires_grad for w in weights]
    acts = [m for m in model.modules() if isinstance(m, QuantReLU6)]
    try:
        model.eval()
        for w in weights:
            w.requires_grad_(True)
        for m in acts:
            m.forward = functools.partial(_ste_relu6, m.bits)  # an instance attribute shadows the class's forward
        yield
    finally:
        for m, mode in modes:
            m.train(mode)
        for w, flag in zip(weights, flags):
            w.requires_grad_(flag)
        for m in acts:
            del m.forward


def _quadratic_forms(weights: list[torch.Tensor], grads: tuple, generator: torch.Generator) -> torch.Tensor:
    """v_l . (H v)_l for every layer l, for one joint Rademacher vector v: (layers,) float64 on the CPU."""
    # drawn on the CPU whatever the device, so a seed gives the same vectors everywhere
    vs = [(torch.randint(0, 2, w.shape, generator=generator) * 2 - 1).to(w.device, w.dtype) for w in weights]
    dot = sum((g * v).sum() for g, v in zip(grads, vs) if g is not None and g.requires_grad)
    if not torch.is_tensor(dot):  # no gradient depends on the weights: the loss is flat in them
        return torch.zeros(len(weights), dtype=torch.float64)
    hvs = torch.autograd.grad(dot, weights, retain_graph=True, allow_unused=True)
    return torch.stack([(v * hv).sum() if hv is not None else v.new_zeros(()) for v, hv in zip(vs, hvs)]).cpu().double()


def _trace_frame(layers: list[tuple[str, nn.Module]], estimates: torch.Tensor) -> pd.DataFrame:
    samples = estimates.shape[0]
    sem = estimates.std(0) / math.sqrt(samples) if samples > 1 else torch.full((len(layers),), math.nan)
    return pd.DataFrame({
        "layer": [name for name, _ in layers],
        "layer_index": np.arange(len(layers)),
        "numel": np.array([m.weight.numel() for _, m in layers], dtype=np.int64),
        "trace": estimates.mean(0).numpy(),
        "trace_std": sem.double().numpy(),
        "samples": samples,
    }, columns=TRACE_COLUMNS)


def _check_choices(choices: Iterable[int]) -> list[int]:
    picked = []
    for b in choices:
        if isinstance(b, bool) or not 0 <= operator.index(b) <= MAX_BITS:
            raise ValueError(f"choices must be integers from 0 to {MAX_BITS}, got {b!r}")
        picked.append(operator.index(b))
    if not picked:
        raise ValueError("choices is empty: give the precisions a layer may take")
    return sorted(set(picked))


def _check_table(traces: pd.DataFrame) -> tuple[list[str], list[int], list[float]]:
    missing = {"layer", "numel", "trace"} - set(traces.columns)
    if missing:
        raise ValueError(f"traces lacks the column(s) {sorted(missing)}: give layer_traces' frame")
    if traces.empty or traces["layer"].duplicated().any():
        raise ValueError("traces must hold one row per layer, at least one, each layer once")
    if not np.isfinite(traces["trace"].to_numpy(dtype=float)).all():
        raise ValueError("traces holds a NaN or infinite trace")
    return list(traces["layer"]), [int(n) for n in traces["numel"]], [float(t) for t in traces["trace"]]


def _weight(weights: nn.Module | Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    if isinstance(weights, nn.Module):
        return weights.get_submodule(name).weight
    if name not in weights:
        raise ValueError(f"weights has no entry for layer {name!r}")
    return weights[name]


def _costs(w: torch.Tensor, numel: int, trace: float, choices: list[int]) -> list[float]:
    """Omega(b) for each choice b, the trace clamped at 0 (a negative estimate says: no measurable cost)."""
    if w.numel() != numel:
        raise ValueError(f"a weight of {w.numel()} entries does not match the frame's numel {numel}: wrong model?")
    sensitivity = max(trace, 0.0) / max(numel, 1)
    return [sensitivity * perturbation(w, b) for b in choices]


def _knapsack(costs: list[list[float]], numel: list[int], choices: list[int], capacity: int) -> list[int]:
    """Exact: min sum cost subject to sum numel * bits <= capacity, a DP over layers on Pareto-optimal partial sums.

    A state is (size, cost, bits so far). One is dropped when another is no larger and no costlier:
    what the later layers add does not depend on how a state was reached, so the optimum survives.
    """
    # the fewest bits the layers after each one need: states that cannot fit them are dropped early
    reserve = list(itertools.accumulate(n * choices[0] for n in reversed(numel[1:])))[::-1] + [0]
    front = [(0, 0.0, ())]
    for layer, (cost, n) in enumerate(zip(costs, numel)):
        states = sorted((size + n * b, total + c, picks + (b,)) for size, total, picks in front
                        for b, c in zip(choices, cost) if size + n * b + reserve[layer] <= capacity)
        front, best = [], math.inf
        for state in states:  # by size, then cost: keep a larger state only when it is strictly cheaper
            if state[1] < best:
                front.append(state)
                best = state[1]
    return list(front[-1][2])  # the cheapest, and the smallest among the cheapest
