"""The BSQ steps against hand computations and invariants."""
import io
import math

import pytest
import torch
from torch import nn

from bsq_explore.bits import plane_values
from bsq_explore.bsq import bit_lasso, clamp_bits_, freeze_, requantize_
from bsq_explore.export import export, load_quantized
from bsq_explore.layers import QuantWeight, bit_layers, convert_
from bsq_explore.stats import layer_precision, model_size

from conftest import Nested


def two_layers():
    model = convert_(nn.Sequential(nn.Linear(2, 1, bias=False), nn.Linear(1, 3, bias=False)), 2)
    a, b = model[0].weight, model[1].weight
    a.pos = nn.Parameter(torch.tensor([[[0.5, 0.0]], [[1.0, 2.0]]]))
    a.neg = nn.Parameter(torch.tensor([[[0.0, 1.5]], [[0.0, 0.0]]]))
    b.pos = nn.Parameter(torch.ones(3, 3, 1))  # 3 bits in the second layer
    b.neg = nn.Parameter(torch.zeros(3, 3, 1))
    return model


def test_bit_lasso_by_hand():
    model = two_layers()
    # weights: numel * nbits / total numel = 2*2/5 and 3*3/5
    expected = 0.8 * (math.sqrt(0.25 + 2.25) + math.sqrt(1 + 4)) + 1.8 * 3 * math.sqrt(3)
    assert bit_lasso(model).item() == pytest.approx(expected, rel=1e-6)


def test_bit_lasso_gradient_by_hand():
    model = two_layers()
    bit_lasso(model).backward()
    a = model[0].weight  # d/dpos_b of 0.8 * r_b is 0.8 * pos_b / r_b, r_b = sqrt(||pos_b||^2 + ||neg_b||^2)
    r = torch.tensor([math.sqrt(0.25 + 2.25), math.sqrt(5.0)]).view(2, 1, 1)
    assert torch.allclose(a.pos.grad, 0.8 * a.pos.detach() / r) and torch.allclose(a.neg.grad, 0.8 * a.neg.detach() / r)
    assert torch.allclose(model[1].weight.pos.grad, torch.full((3, 3, 1), 1.8 / math.sqrt(3)))


def test_bit_lasso_gradient_matches_autograd_through_the_formula():
    torch.manual_seed(0)
    model = convert_(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(5, 2)), 4).double()
    with torch.no_grad():
        for _, m in bit_layers(model):
            m.weight.pos.uniform_(0, 2), m.weight.neg.uniform_(0, 2)
        model[0].weight.pos[1] = 0
        model[0].weight.neg[1] = 0
    weights = [m.weight for _, m in bit_layers(model)]
    total = sum(w.shape.numel() for w in weights)
    formula = sum(w.shape.numel() * w.nbits / total *
                  (w.pos.square().flatten(1).sum(1) + w.neg.square().flatten(1).sum(1) + 1e-12).sqrt().sum()
                  for w in weights)
    expected = torch.autograd.grad(formula, [p for w in weights for p in (w.pos, w.neg)])
    got = torch.autograd.grad(bit_lasso(model), [p for w in weights for p in (w.pos, w.neg)])
    for e, g in zip(expected, got):
        assert torch.allclose(e, g, rtol=1e-12, atol=1e-15)


def test_bit_lasso_gradient_is_finite_on_an_empty_plane():
    model = two_layers()
    with torch.no_grad():
        model[1].weight.pos[0] = 0
    bit_lasso(model).backward()
    assert torch.isfinite(model[1].weight.pos.grad).all() and not model[1].weight.pos.grad[0].any()


def test_bit_lasso_needs_a_converted_model():
    with pytest.raises(ValueError, match="convert_"):
        bit_lasso(nn.Linear(2, 2))


def test_clamp_bits_puts_planes_back_in_range():
    model = two_layers()
    with torch.no_grad():
        model[0].weight.pos.fill_(3.0)
        model[0].weight.neg.fill_(-1.0)
        model[1].weight.pos[0, 0] = 0.5
    clamp_bits_(model)
    assert (model[0].weight.pos == 2).all() and (model[0].weight.neg == 0).all()
    assert model[1].weight.pos[0, 0].item() == 0.5  # values inside [0, 2] are left alone


def set_planes(w, pos, neg):
    w.pos = nn.Parameter(torch.as_tensor(pos, dtype=torch.float32))
    w.neg = nn.Parameter(torch.as_tensor(neg, dtype=torch.float32))


def test_requantize_moves_weights_at_most_half_a_grid_step():
    torch.manual_seed(0)
    model = convert_(Nested(), 6)
    before = {}
    with torch.no_grad():
        for name, layer in bit_layers(model):
            w = layer.weight
            set_planes(w, torch.rand_like(w.pos) * 2, torch.rand_like(w.neg) * 2)
            before[name] = (w.scale * plane_values(w.pos, w.neg) / 63, w.scale.item() / 63)
    table = requantize_(model, max_bits=8)
    assert (table.clipped == 0).all()
    for name, layer in bit_layers(model):
        value, step = before[name]
        assert (layer.weight() - value).abs().max().item() <= step / 2 * (1 + 1e-5), name
        assert set(layer.weight.pos.unique().tolist()) <= {0.0, 1.0}


def test_requantize_drops_empty_top_and_bottom_planes_keeping_the_weight():
    model = convert_(nn.Sequential(nn.Linear(3, 1, bias=False)), 6)
    w = model[0].weight
    q = torch.tensor([[12.0, -4.0, 8.0]])  # bits 2 and 3 only: planes 0, 1, 4, 5 are empty
    set_planes(w, torch.stack([(q.clamp(min=0).long() >> b & 1).float() for b in range(6)]),
               torch.stack([((-q).clamp(min=0).long() >> b & 1).float() for b in range(6)]))
    effective = w().detach()
    row = requantize_(model).iloc[0]
    assert (row.nbits_before, row.nbits_after, row.dropped_msb, row.dropped_lsb) == (6, 2, 2, 2)
    assert w.nbits == 2 and w.lsb_offset == 2
    assert w.integers().tolist() == [[3, -1, 2]]
    torch.testing.assert_close(w(), effective)


def test_requantize_grows_one_bit_on_overflow_then_clips_at_max_bits():
    model = convert_(nn.Sequential(nn.Linear(2, 1, bias=False)), 3)
    w = model[0].weight
    set_planes(w, [[[1.0, 1.0]], [[1.0, 0.0]], [[2.0, 0.0]]], torch.zeros(3, 1, 2))  # x = 11 and 1
    scale = w.scale.item()
    row = requantize_(model, max_bits=4).iloc[0]
    assert (row.nbits_after, row.grown, row.clipped) == (4, 1, 0)
    assert w.integers().tolist() == [[11, 1]]
    torch.testing.assert_close(w().detach(), torch.tensor([[11.0, 1.0]]) * scale / 7)

    set_planes(w, torch.full((4, 1, 2), 2.0), torch.zeros(4, 1, 2))  # x = 30 > 15 at max_bits
    row = requantize_(model, max_bits=4).iloc[0]
    assert (row.nbits_after, row.grown, row.clipped) == (4, 0, 2)
    assert w.integers().tolist() == [[15, 15]]


def test_an_all_zero_layer_reports_zero_bits():
    model = convert_(nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2)), 8)
    with torch.no_grad():
        model[0].weight.pos.mul_(0.001)  # every |x| <= 0.255: the integer weight rounds to zero
        model[0].weight.neg.mul_(0.001)
    table = requantize_(model)
    assert table.nbits_after.tolist() == [1, 8]
    assert layer_precision(model).nbits.tolist() == [0, 8]
    assert model_size(model).avg_bits == pytest.approx(8 * 4 / 12)


def test_freeze_keeps_outputs_and_export_round_trips_exactly(images):
    torch.manual_seed(3)
    model = convert_(Nested(), 8)
    with torch.no_grad():  # continuous planes, as in the middle of BSQ training
        for _, layer in bit_layers(model):
            layer.weight.pos.mul_(torch.rand_like(layer.weight.pos) * 1.5)
    requantize_(model)
    bsq_out = model(images)
    freeze_(model)
    assert all(isinstance(layer.weight, QuantWeight) for _, layer in bit_layers(model))
    assert torch.equal(model(images), bsq_out)

    buffer = io.BytesIO()
    torch.save(export(model), buffer)
    buffer.seek(0)
    exported = torch.load(buffer, weights_only=True)
    for spec in exported["layers"].values():
        assert not spec["q"].is_floating_point()
        assert spec["q"].abs().max() <= 2 ** spec["nbits"] - 1
    restored = load_quantized(Nested(), exported)
    assert torch.equal(restored(images), model(images))


def test_freeze_of_an_empty_layer_stays_zero_through_finetuning():
    model = convert_(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), 4)
    with torch.no_grad():
        model[0].weight.pos.zero_(); model[0].weight.neg.zero_()
    freeze_(model)
    assert model[0].weight.nbits == 0
    opt = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).sum().backward()
        opt.step()
    assert not model[0].weight().any()
    assert export(model)["layers"]["0"]["nbits"] == 0


def test_load_quantized_refuses_a_foreign_dict():
    with pytest.raises(ValueError, match="not a bsq_explore export"):
        load_quantized(Nested(), {"layers": {}})
