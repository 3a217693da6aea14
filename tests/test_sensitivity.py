"""sensitivity.py against oracles: exact Hessians, a closed-form last-layer trace, hand-computed errors, exhaustive search."""
import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from bsq_explore.bits import from_bits, to_bits
from bsq_explore.models import QuantReLU6
from bsq_explore.sensitivity import allocate_bits, layer_traces, perturbation


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    return model, torch.randn(16, 4), torch.randint(0, 2, (16,))


def exact_trace(model, x, y, name):
    """tr of the Hessian of the mean cross-entropy over all of x with respect to one weight, from the full Hessian."""
    w0 = model.get_parameter(name)
    loss = lambda w: F.cross_entropy(functional_call(model, {name: w.view_as(w0)}, (x,)), y)
    return torch.autograd.functional.hessian(loss, w0.detach().reshape(-1)).diagonal().sum().item()


def test_traces_match_the_exact_hessian(tiny):
    model, x, y = tiny
    frame = layer_traces(model, x, y, samples=400, batch_size=5)  # batches of 5, 5, 5, 1: weighted by size
    for row in frame.itertuples():
        exact = exact_trace(model, x, y, row.layer + ".weight")
        assert row.trace_std < 0.1 * exact, "too few samples for a meaningful check"
        assert abs(row.trace - exact) < 3 * row.trace_std, (row.layer, row.trace, exact)


def test_last_layer_trace_through_batch_norm_and_quant_relu():
    """The last linear layer's Hessian is mean_i (diag p_i - p_i p_i^T) (x) h_i h_i^T, of trace mean_i (1 - |p_i|^2) |h_i|^2,
    from a forward pass alone; measured in eval mode through QuantReLU6 (once-differentiable), the model restored after."""
    torch.manual_seed(2)
    body = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), QuantReLU6(4), nn.Flatten())
    model = nn.Sequential(body, nn.Linear(3 * 4 * 4, 3))
    model[0][1].running_mean.uniform_(-0.2, 0.2)
    x, y = torch.randn(12, 1, 6, 6), torch.randint(0, 3, (12,))
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    frame = layer_traces(model, x, y, samples=2000, batch_size=12)
    assert model.training and model[0][2].training and "forward" not in vars(model[0][2])
    for k, v in model.state_dict().items():  # eval mode: no statistic moves (running_max stays NaN)
        torch.testing.assert_close(v, buffers[k], rtol=0, atol=0, equal_nan=True)
    with torch.no_grad():
        model.eval()
        h, p = body(x), model(x).softmax(1)
    exact = ((1 - p.pow(2).sum(1)) * h.pow(2).sum(1)).mean().item()
    last = frame.iloc[-1]
    assert last.trace_std < 0.1 * exact and abs(last.trace - exact) < 3 * last.trace_std
    # the conv behind QuantReLU6: the exact Hessian of the straight-through network (forward quantized, backward relu6)
    model.eval()
    model[0][2] = StraightThrough(4)
    conv = exact_trace(model, x, y, "0.0.weight")
    first = frame.iloc[0]
    assert first.trace_std < 0.1 * conv and abs(first.trace - conv) < 3 * first.trace_std


class StraightThrough(nn.Module):
    """QuantReLU6 with the STE written as relu6 plus a constant: what its gradient says the function is."""

    def __init__(self, bits):
        super().__init__()
        self.n = 2**bits - 1

    def forward(self, x):
        a = F.relu6(x)
        top = a.max().item()
        return a - a.detach() + (a.detach() * self.n / top).round() * top / self.n


def test_same_seed_same_frame_other_seed_differs(tiny):
    model, x, y = tiny
    first = layer_traces(model, x, y, samples=5, batch_size=8, seed=3)
    pd.testing.assert_frame_equal(first, layer_traces(model, x, y, samples=5, batch_size=8, seed=3))
    assert not np.allclose(first.trace, layer_traces(model, x, y, samples=5, batch_size=8, seed=4).trace)


def test_filter_network_order_and_numel(nested, images):
    labels = torch.tensor([0, 4, 2])
    frame = layer_traces(nested, images, labels, samples=2, filter_fn=lambda m, name: name != "head.1")
    assert frame.layer.tolist() == ["features.0", "features.2.0", "out"]
    assert frame.layer_index.tolist() == [0, 1, 2]
    assert frame.numel.tolist() == [6 * 2 * 3 * 3, 8 * 6 * 3 * 3, 5 * 16]
    assert (frame.samples == 2).all() and frame.trace_std.notna().all()
    assert layer_traces(nested, images, labels, samples=1).trace_std.isna().all(), "one sample has no standard error"


@pytest.mark.parametrize("change, message", [
    (dict(samples=0), "samples"), (dict(batch_size=0), "batch_size"),
    (dict(filter_fn=lambda m, name: False), "no layer"),
    (dict(y=torch.zeros(15, dtype=torch.long)), "same length"),
    (dict(x=torch.zeros(0, 4), y=torch.zeros(0, dtype=torch.long)), "empty"),
])
def test_bad_input_raises(tiny, change, message):
    model, x, y = tiny
    args = dict(model=model, x=x, y=y, samples=2) | change
    with pytest.raises(ValueError, match=message):
        layer_traces(**args)


def test_perturbation_by_hand():
    w = torch.tensor([1.0, 0.4])
    assert perturbation(w, 1) == pytest.approx(0.16)  # Q gives [1, 0]
    assert perturbation(w, 2) == pytest.approx((0.4 - 1 / 3) ** 2)  # Q gives [1, 1/3]
    assert perturbation(-w, 2) == pytest.approx((0.4 - 1 / 3) ** 2)
    assert perturbation(w, 0) == pytest.approx(1.16)  # an emptied layer loses all of W
    assert perturbation(torch.tensor([0.5, -0.25, 0.75]) * 8, 2) == pytest.approx(64 * (0.5 - 2 / 3 * 0.75) ** 2)


@pytest.mark.parametrize("nbits", [1, 3, 8])
def test_perturbation_is_the_error_of_the_kits_layer_weight(nbits):
    torch.manual_seed(nbits)
    w = torch.randn(5, 7)
    kit = from_bits(*to_bits(w, nbits))  # the weight a layer converted at nbits computes
    assert perturbation(w, nbits) == pytest.approx((kit.double() - w.double()).pow(2).sum().item(), rel=1e-6)


def random_layers(seed, sizes=(3, 7, 12, 20)):
    gen = torch.Generator().manual_seed(seed)
    weights = {f"l{i}": torch.randn(n, generator=gen) for i, n in enumerate(sizes)}
    traces = pd.DataFrame({"layer": list(weights), "numel": list(sizes),
                           "trace": (torch.rand(len(sizes), generator=gen) * 10).tolist()})
    return traces, weights


def exhaustive(traces, weights, budget, choices):
    """The best objective over every allocation within the budget (traces clamped at 0, as allocate_bits documents)."""
    sizes, best = traces.numel.to_numpy(), math.inf
    omega = [[max(t, 0) / n * perturbation(weights[name], b) for b in choices]
             for name, n, t in zip(traces.layer, traces.numel, traces.trace)]
    for pick in itertools.product(range(len(choices)), repeat=len(sizes)):
        if sum(n * choices[i] for n, i in zip(sizes, pick)) <= budget * sizes.sum():
            best = min(best, sum(row[i] for row, i in zip(omega, pick)))
    return best


def objective(traces, weights, bits):
    return sum(max(t, 0) / n * perturbation(weights[name], bits[name])
               for name, n, t in zip(traces.layer, traces.numel, traces.trace))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("choices", [range(1, 9), (0, 2, 3, 4, 8)])
def test_allocation_matches_exhaustive_search(seed, choices):
    traces, weights = random_layers(seed)
    if seed == 1:
        traces.loc[2, "trace"] = -3.0  # Hutchinson noise: counts as a free layer
    lo, hi = min(choices), max(choices)
    for budget in (lo, lo + 0.3, 2.5, 3.3, 4.7, 6.0, hi - 0.2, hi):
        bits = allocate_bits(traces, weights, budget, choices)
        assert list(bits) == traces.layer.tolist() and set(bits.values()) <= set(choices)
        assert sum(n * bits[name] for name, n in zip(traces.layer, traces.numel)) <= budget * traces.numel.sum() + 1e-9
        assert objective(traces, weights, bits) == pytest.approx(exhaustive(traces, weights, budget, list(choices)),
                                                                 rel=1e-12, abs=1e-15)


def test_extreme_budgets_give_uniform_bits():
    traces, weights = random_layers(3, sizes=(40, 50, 60))
    for w in weights.values():
        errors = [perturbation(w, b) for b in range(1, 9)]
        assert all(a > b for a, b in zip(errors, errors[1:])), "the check needs errors falling with every bit"
    assert set(allocate_bits(traces, weights, 8).values()) == {8}
    assert set(allocate_bits(traces, weights, 1).values()) == {1}
    assert set(allocate_bits(traces, weights, 4, choices=(2, 4)).values()) == {4}


def test_negative_trace_counts_as_zero_and_gets_the_fewest_bits():
    traces, weights = random_layers(4)
    negative, zero = traces.copy(), traces.copy()
    negative.loc[1, "trace"], zero.loc[1, "trace"] = -5.0, 0.0
    for budget in (2, 4.5, 8):
        bits = allocate_bits(negative, weights, budget)
        assert bits == allocate_bits(zero, weights, budget) and bits["l1"] == 1
    # a negative trace is no reward for error: 3 bits quantize [1, 1/3, -1/3] worse than 2 bits, yet the layer gets 2
    weights = {"a": torch.tensor([1.0, 1 / 3, -1 / 3]), "b": torch.tensor([0.3, -1.0, 0.8, 0.1])}
    assert perturbation(weights["a"], 3) > 100 * perturbation(weights["a"], 2)
    frame = pd.DataFrame({"layer": ["a", "b"], "numel": [3, 4], "trace": [-1.0, 1.0]})
    assert allocate_bits(frame, weights, 3, choices=(2, 3)) == {"a": 2, "b": 3}


@pytest.mark.parametrize("budget, choices", [(0.5, range(1, 9)), (8.5, range(1, 9)), (math.nan, range(1, 9)), (1, (2, 4))])
def test_budget_out_of_range_raises(budget, choices):
    traces, weights = random_layers(0)
    with pytest.raises(ValueError, match="budget"):
        allocate_bits(traces, weights, budget, choices)


def test_allocation_from_measured_traces_and_model(tiny):
    model, x, y = tiny
    traces = layer_traces(model, x, y, samples=20)
    weights = {name: model.get_submodule(name).weight for name in traces.layer}
    bits = allocate_bits(traces, model, 3.5)
    assert bits == allocate_bits(traces, weights, 3.5) and list(bits) == ["0", "2"]
    assert objective(traces, weights, bits) == pytest.approx(exhaustive(traces, weights, 3.5, list(range(1, 9))))
    with pytest.raises(ValueError, match="numel"):
        allocate_bits(traces.assign(numel=traces.numel + 1), model, 3.5)
    with pytest.raises(ValueError, match="lacks"):
        allocate_bits(traces.drop(columns="trace"), model, 3.5)
