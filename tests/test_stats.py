"""Frames and sizes against hand computations."""
import math

import pytest
import torch
from test_bsq import two_layers
from torch import nn

from bsq_explore.bsq import freeze_, requantize_
from bsq_explore.layers import BitWeight, QuantWeight, bit_layers, convert_, live_bits
from bsq_explore.stats import BIT_COLUMNS, LAYER_COLUMNS, bit_sparsity, layer_precision, model_size

from conftest import Nested


def one_linear():
    model = nn.Sequential(nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0, 0.5]]))
    return convert_(model, 2)  # scale 1, q = 3, -3, round(1.5) = 2


def test_bit_sparsity_by_hand():
    frame = bit_sparsity(one_linear())
    assert list(frame.columns) == BIT_COLUMNS
    assert frame.bit.tolist() == [0, 1] and frame.nbits.tolist() == [2, 2]
    assert frame.density.tolist() == pytest.approx([2 / 3, 1.0])
    assert frame.norm.tolist() == pytest.approx([math.sqrt(2), math.sqrt(3)])


def test_bit_index_keeps_its_meaning_after_dropping_low_planes():
    model = one_linear()
    with torch.no_grad():
        model[0].weight.pos[0] = 0; model[0].weight.neg[0] = 0
    requantize_(model)
    frame = bit_sparsity(model)
    assert frame.bit.tolist() == [1] and frame.nbits.tolist() == [1]
    assert layer_precision(model).lsb_offset.tolist() == [1]


def test_model_size_by_hand():
    size = model_size(two_layers())  # 2 weights at 2 bits, 3 weights at 3 bits
    assert size.total_bits == 13 and size.numel == 5
    assert size.avg_bits == pytest.approx(2.6) and size.compression == pytest.approx(32 / 2.6)


def test_model_size_of_an_empty_model_is_infinite_compression():
    model = two_layers()
    for layer in model:
        with torch.no_grad():
            layer.weight.pos.zero_(); layer.weight.neg.zero_()
    assert model_size(model).avg_bits == 0 and model_size(model).compression == math.inf


def test_layer_precision_rows():
    frame = layer_precision(convert_(Nested(), 5))
    assert list(frame.columns) == LAYER_COLUMNS
    assert frame.kind.tolist() == ["conv", "conv", "linear", "linear"]
    assert frame.numel.tolist() == [6 * 2 * 9, 8 * 6 * 9, 16 * 128, 5 * 16]
    assert frame.nbits.tolist() == [5] * 4 and frame.layer_index.tolist() == [0, 1, 2, 3]
    assert frame.layer.tolist() == ["features.0", "features.2.0", "head.1", "out"]


def test_frozen_model_reports_the_same_frames():
    torch.manual_seed(0)
    model = convert_(Nested(), 6)
    requantize_(model)
    bits, precision = bit_sparsity(model), layer_precision(model)
    freeze_(model)
    assert bit_sparsity(model).equals(bits)
    assert layer_precision(model).drop(columns="scale").equals(precision.drop(columns="scale"))
    assert layer_precision(model).scale.tolist() == pytest.approx(precision.scale.tolist())


def mixed_precision_planes():
    """Nested at 4 bits with one layer at 7, planes anywhere in [0, 2] (mid-training), one layer
    whose values all stay within 1/2 of zero (empty), one frozen layer."""
    torch.manual_seed(0)
    model = convert_(Nested(), 4)
    model.head[1].weight = BitWeight(torch.randn(16, 128), 7)
    with torch.no_grad():
        for _, m in bit_layers(model):
            m.weight.pos.uniform_(0, 2), m.weight.neg.uniform_(0, 2)
        empty = model.features[2][0].weight
        empty.pos.uniform_(0, 0.02), empty.neg.uniform_(0, 0.02)
    model.out.weight = QuantWeight(torch.rand(5, 16) * 2 - 1, torch.tensor(0.5), 3)
    return model


def test_bit_sparsity_matches_a_per_weight_oracle_across_precisions():
    model = mixed_precision_planes()
    frame = bit_sparsity(model)
    for i, (name, m) in enumerate(bit_layers(model)):
        rows = frame[frame.layer_index == i]
        q = m.weight.integers().abs().flatten()  # the oracle: digits of each integer weight, one by one
        n = m.weight.nbits
        density = [((q >> b) & 1).double().mean().item() for b in range(n)]
        live = n if q.any() else 0
        assert rows.layer.tolist() == [name] * n and rows.bit.tolist() == list(range(n))
        assert rows.nbits.tolist() == [live] * n and rows.density.tolist() == pytest.approx(density)
        if isinstance(m.weight, BitWeight):
            pos, neg = m.weight.pos.detach().double().flatten(1), m.weight.neg.detach().double().flatten(1)
            norms = (pos.square().sum(1) + neg.square().sum(1)).sqrt()
            assert rows.norm.tolist() == pytest.approx(norms.tolist(), rel=1e-6)
    assert frame.groupby("layer_index").nbits.first().tolist() == [4, 0, 7, 3]
    assert layer_precision(model).nbits.tolist() == [4, 0, 7, 3]


def test_live_bits_agrees_with_the_integer_weight():
    model = mixed_precision_planes()
    weights = [m.weight for _, m in bit_layers(model)]
    late = BitWeight(torch.zeros(3, 100), 5)  # its only nonzero weight lies past the first 64
    tie = BitWeight(torch.zeros(2, 2), 3)     # a value of exactly 1/2 rounds to 0 (half to even)
    with torch.no_grad():
        late.pos[2, 2, 50] = 1.0
        tie.pos[0, 1, 1] = 0.5
    weights += [late, tie, BitWeight(torch.zeros(0, 3), 2)]
    expected = [w.nbits if w.integers().any() else 0 for w in weights]
    assert expected == [4, 0, 7, 3, 5, 0, 0]
    assert live_bits(weights) == expected == [w.live_bits() for w in weights]
