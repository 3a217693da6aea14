"""bits.py against the uniform-quantization oracle, by property tests."""
import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from bsq_explore.bits import digits, from_bits, plane_norms, quantize, to_bits


def uniform_quantize(w: torch.Tensor, n: int) -> torch.Tensor:
    """The oracle: symmetric uniform n-bit quantization with scale max|w|, written independently."""
    s = w.abs().max()
    if s == 0:
        return torch.zeros_like(w)
    L = 2**n - 1
    return s * (torch.sign(w) * torch.round(w.abs() / s * L) / L)


shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple)
weights = shapes.flatmap(lambda shape: arrays("float32", shape, elements=st.floats(-4, 4, width=32)))


@settings(max_examples=200, deadline=None)
@given(w=weights, n=st.integers(1, 16))
def test_round_trip_is_uniform_quantization(w, n):
    w = torch.from_numpy(w)
    pos, neg, scale = to_bits(w, n)
    assert pos.shape == neg.shape == (n, *w.shape)
    assert set(pos.unique().tolist()) <= {0.0, 1.0} and set(neg.unique().tolist()) <= {0.0, 1.0}
    assert not (pos * neg).any(), "a weight's digits sit in pos or in neg, never both"
    torch.testing.assert_close(from_bits(pos, neg, scale), uniform_quantize(w, n), rtol=0, atol=0)


def test_planes_hold_binary_digits_lsb_first():
    w = torch.tensor([7.0, -5.0, 2.0, 0.0])  # scale 7 at 3 bits: q = 7, -5, 2, 0
    pos, neg, scale = to_bits(w, 3)
    assert scale.item() == 7.0
    assert pos.T.tolist() == [[1, 1, 1], [0, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert neg.T.tolist() == [[0, 0, 0], [1, 0, 1], [0, 0, 0], [0, 0, 0]]


def test_all_zero_weight_gives_zero_planes():
    pos, neg, scale = to_bits(torch.zeros(3, 2), 4)
    assert scale.item() == 0 and not pos.any() and not neg.any()
    assert not from_bits(pos, neg, scale).any()


def test_gradient_of_a_bit_is_scaled_weight_gradient():
    torch.manual_seed(0)
    n = 5
    pos, neg, scale = to_bits(torch.randn(4, 3), n)
    pos.requires_grad_(); neg.requires_grad_(); scale.requires_grad_()
    w = from_bits(pos, neg, scale)
    upstream = torch.randn_like(w)
    (w * upstream).sum().backward()
    for b in range(n):
        expected = scale.detach() * 2**b / (2**n - 1) * upstream
        torch.testing.assert_close(pos.grad[b], expected)
        torch.testing.assert_close(neg.grad[b], -expected)
    # dW/ds = Q_n(x): the quantized weight divided by the scale
    torch.testing.assert_close(scale.grad, (w.detach() / scale.detach() * upstream).sum())


def test_gradients_off_the_grid_match_autograd_through_the_formula():
    torch.manual_seed(1)
    pos, neg = torch.rand(2, 4, 3, 5, dtype=torch.float64) * 2  # mid-training planes in [0, 2]
    pos[:, 0, 0], neg[:, 0, 0] = 2, 0  # x = 30: clamped to 15
    pos.requires_grad_(), neg.requires_grad_()
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 5, dtype=torch.float64)
    got = torch.autograd.grad((from_bits(pos, neg, scale) * upstream).sum(), (pos, neg, scale))
    x = ((2.0 ** torch.arange(4, dtype=torch.float64)).view(-1, 1, 1) * (pos - neg)).sum(0)
    q = x + (x.clamp(-15, 15).round() - x).detach()  # clamp and round straight through
    expected = torch.autograd.grad((scale * q / 15 * upstream).sum(), (pos, neg, scale))
    assert (x.abs() > 15).any()  # some weights are clamped
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    half = [t.detach().half().requires_grad_() for t in (pos, neg)]
    from_bits(*half, scale.detach().half()).sum().backward()
    assert all(t.grad.dtype == torch.float16 and t.grad.shape == t.shape for t in half)


def test_from_bits_takes_a_python_scale_and_a_scale_per_row():
    pos, neg, scale = to_bits(torch.randn(3, 4), 4)
    assert torch.equal(from_bits(pos, neg, scale.item()), from_bits(pos, neg, scale))
    per_row = torch.tensor([[0.5], [1.0], [2.0]], requires_grad=True)
    from_bits(pos, neg, per_row).sum().backward()
    at_one = from_bits(pos, neg, torch.tensor(1.0))  # dW/ds = Q_n(x), the weight at scale 1
    torch.testing.assert_close(per_row.grad, at_one.sum(1, keepdim=True))


def test_quantize_clamps_rounds_and_passes_gradient_straight_through():
    x = torch.tensor([-2.0, -0.4, 0.1, 0.26, 0.9, 3.0], requires_grad=True)
    y = quantize(x, 2)  # grid k/3
    assert y.tolist() == pytest.approx([-1, -1 / 3, 0, 1 / 3, 1, 1])
    y.sum().backward()
    assert x.grad.tolist() == [1.0] * 6


def test_digits_and_norms_by_hand():
    pos, neg = digits(torch.tensor([[3, -2], [0, 1]]), 2)
    assert pos.tolist() == [[[1, 0], [0, 1]], [[1, 0], [0, 0]]]
    assert neg.tolist() == [[[0, 0], [0, 0]], [[0, 1], [0, 0]]]
    assert plane_norms(pos.float(), neg.float()).tolist() == pytest.approx([2.0**0.5, 2.0**0.5])


@pytest.mark.parametrize("bad", [0, 17, -1, 2.5, True])
def test_bad_precision_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="nbits must be an integer from 1 to 16"):
        to_bits(torch.ones(3), bad)


def test_bad_weights_are_clear_errors():
    with pytest.raises(TypeError, match="floating-point"):
        to_bits(torch.ones(3, dtype=torch.int64), 4)
    with pytest.raises(ValueError, match="NaN or inf"):
        to_bits(torch.tensor([1.0, float("nan")]), 4)
    with pytest.raises(ValueError, match="share a shape"):
        from_bits(torch.zeros(2, 3), torch.zeros(3, 3), torch.tensor(1.0))
