"""bits.py against the uniform-quantization oracle, by property tests."""
import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from bsq_explore.bits import MAX_BITS, digits, from_bits, plane_norms, plane_values, quantize, to_bits


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


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.bool]
nbits_values = st.one_of(st.integers(-3, 20), st.floats(-3, 20), st.booleans())
any_shapes = st.lists(st.integers(0, 4), max_size=3).map(tuple)  # includes 0-d and empty shapes


def weight(shape, dtype, magnitude, special, seed):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * magnitude
    if special is not None and w.numel():
        w.view(-1)[0] = special
    return w.to(dtype)


@settings(max_examples=300, deadline=None)
@given(shape=any_shapes, dtype=st.sampled_from(DTYPES), nbits=nbits_values, magnitude=st.sampled_from([0, 1e-3, 1, 300]),
       special=st.sampled_from([None, 0.0, float("nan"), float("inf")]), seed=st.integers(0, 2**16))
def test_fuzzed_to_bits_gives_the_uniform_quantization_or_a_one_line_error(shape, dtype, nbits, magnitude, special,
                                                                          seed):
    w = weight(shape, dtype, magnitude, special, seed)
    try:
        pos, neg, scale = to_bits(w, nbits)
    except (ValueError, TypeError) as err:
        assert "\n" not in str(err)
        ok_nbits = not isinstance(nbits, bool) and isinstance(nbits, int) and 1 <= nbits <= MAX_BITS
        ok_weight = w.is_floating_point() and bool(torch.isfinite(w).all())
        assert not (ok_nbits and ok_weight), f"a valid call raised {err!r}"
        return
    assert pos.shape == neg.shape == (nbits, *shape) and pos.dtype == neg.dtype == scale.dtype == dtype
    assert set(pos.unique().tolist()) <= {0, 1} and not (pos * neg).any()
    w64 = w.double()
    s = w64.abs().max().item() if w.numel() else 0.0
    assert scale.item() == s
    q = plane_values(pos.double(), neg.double())  # the integers the planes hold
    if s == 0:
        assert not q.any()
        return
    exact = w64.abs() / s * (2**nbits - 1)  # the oracle in float64: |q| = round(exact), sign of w
    assert torch.equal(torch.sign(q) * torch.sign(w64), torch.sign(q.abs())), "q != 0 carries the sign of w"
    off = (q.abs() - torch.round(exact)).abs()
    near_tie = ((exact - exact.floor()) - 0.5).abs() < 1e-2  # float32 math may round a near-tie the other way
    assert bool((off <= near_tie.double()).all()), "planes hold round(|w| / s * (2^n - 1))"


@settings(max_examples=300, deadline=None)
@given(shape=any_shapes, n=st.integers(-1, 18), dtype=st.sampled_from(DTYPES), neg_dtype=st.sampled_from(DTYPES),
       scale=st.floats(0, 100), mismatch=st.booleans(), seed=st.integers(0, 2**16))
def test_fuzzed_from_bits_gives_the_effective_weight_or_a_one_line_error(shape, n, dtype, neg_dtype, scale, mismatch,
                                                                        seed):
    generator = torch.Generator().manual_seed(seed)
    plane_shape = (n, *shape) if n >= 0 else shape
    pos = torch.randint(0, 3, plane_shape, generator=generator).to(dtype)  # planes relax into [0, 2]
    neg = torch.randint(0, 3, plane_shape[:-1] + (1,) if mismatch and plane_shape else plane_shape,
                        generator=generator).to(neg_dtype)
    s = torch.tensor(scale, dtype=dtype if dtype.is_floating_point else torch.float32)
    try:
        w = from_bits(pos, neg, s)
    except (ValueError, TypeError) as err:
        assert "\n" not in str(err)
        valid = pos.is_floating_point() and pos.dtype == neg.dtype and pos.shape == neg.shape \
            and pos.dim() > 0 and 1 <= pos.shape[0] <= MAX_BITS
        assert not valid, f"a valid call raised {err!r}"
        return
    nbits, weight_shape = pos.shape[0], pos.shape[1:]  # n < 0 made planes of the shape itself
    levels = 2**nbits - 1
    x = (2.0 ** torch.arange(nbits, dtype=torch.float64)).view(-1, *[1] * len(weight_shape))
    k = torch.round(((x * pos.double()).sum(0) - (x * neg.double()).sum(0)).clamp(-levels, levels))
    expected = s.double() * k / levels  # the effective weight at integer level k, in float64
    assert w.shape == weight_shape and w.dtype == dtype
    info = torch.finfo(dtype)
    subnormal_step = info.smallest_normal * info.eps  # below smallest_normal a dtype rounds to this grid
    torch.testing.assert_close(w.double(), expected, rtol=4 * info.eps, atol=4 * info.eps * scale + subnormal_step)
