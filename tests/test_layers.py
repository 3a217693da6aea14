"""Converted layers against float and uniformly quantized oracles."""
import pytest
import torch
from test_bits import uniform_quantize
from torch import nn

from bsq_explore.bsq import requantize_
from bsq_explore.layers import BitLayer, BitWeight, QuantWeight, bit_layers, convert_, weights_up_front
from bsq_explore.models import not_shortcut, resnet20

from conftest import Nested, clone


def test_converted_model_equals_uniformly_quantized_model_exactly(nested, images):
    oracle = clone(nested)
    with torch.no_grad():
        for m in oracle.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(uniform_quantize(m.weight, 8))
    convert_(nested, 8)
    assert len(bit_layers(nested)) == 4
    assert torch.equal(nested(images), oracle(images))


def test_converted_model_is_within_grid_tolerance_of_float(nested, images):
    float_model = clone(nested)
    convert_(nested, 8)
    for (name, layer), (_, m) in zip(bit_layers(nested), [(n, m) for n, m in float_model.named_modules()
                                                           if isinstance(m, (nn.Conv2d, nn.Linear))]):
        step = m.weight.abs().max() / 255
        assert (layer.weight() - m.weight).abs().max() <= step / 2 + 1e-7, name
    torch.testing.assert_close(nested(images), float_model(images), rtol=0.02, atol=0.02)


@pytest.mark.parametrize("layer", [nn.Linear(10, 3), nn.Conv2d(3, 4, 3, stride=2, padding=1)])
def test_single_layer_output_within_worst_case_bound(layer):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 6, 6) if isinstance(layer, nn.Conv2d) else torch.randn(2, 10)
    model = nn.Sequential(layer)
    reference = clone(model)(x)
    convert_(model, 6)
    # each weight moves at most half a grid step; a 1-norm of the receptive field bounds the output error
    half_step = layer.weight.abs().max() / 63 / 2
    receptive = 3 * 3 * 3 * x.abs().max() if isinstance(layer, nn.Conv2d) else x.abs().sum(1, keepdim=True)
    assert ((model(x) - reference).abs() <= half_step * receptive + 1e-6).all()


def test_filter_fn_keeps_resnet_shortcuts_in_float():
    model = convert_(resnet20(), 8, filter_fn=not_shortcut)
    names = [name for name, _ in bit_layers(model)]
    assert len(names) == 20 and names[0] == "conv1" and names[-1] == "fc"
    assert not any("downsample" in n for n in names)
    assert isinstance(model.layer2[0].downsample[0], nn.Conv2d)


def test_bias_and_op_arguments_are_kept(nested):
    conv = nested.features[0]
    convert_(nested, 4)
    twin = nested.features[0]
    assert isinstance(twin, BitLayer) and twin.kind == "conv"
    assert twin.bias is conv.bias
    assert twin.op_args == dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=2)
    assert twin.weight.pos.shape == (4, 6, 2, 3, 3)


def test_state_dict_round_trip_across_changed_precision(nested, images):
    convert_(nested, 8)
    with torch.no_grad():  # empty the 3 least significant and the top planes of one layer
        w = nested.out.weight
        w.pos[:3] = 0; w.neg[:3] = 0; w.pos[7] = 0; w.neg[7] = 0
    requantize_(nested)
    assert nested.out.weight.nbits == 4 and nested.out.weight.lsb_offset == 3
    fresh = convert_(Nested(), 8)
    fresh.load_state_dict(nested.state_dict())
    assert fresh.out.weight.nbits == 4 and fresh.out.weight.lsb_offset == 3
    assert torch.equal(fresh(images), nested(images))


def test_reflect_padding_is_refused():
    with pytest.raises(ValueError, match="zero-padded"):
        convert_(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")))


def test_bit_weight_parameters_are_named_pos_neg_scale():
    w = BitWeight(torch.randn(3, 2), 5)
    assert [n for n, _ in w.named_parameters()] == ["pos", "neg", "log_scale"]
    assert w.pos.shape == (5, 3, 2) and w.scale.shape == ()


def test_scale_gradient_reaches_log_scale():
    torch.manual_seed(0)
    w = BitWeight(torch.randn(4, 3), 6)
    upstream = torch.randn(4, 3)
    (w() * upstream).sum().backward()
    # dL/dlog s = s dL/ds = sum(upstream * W)
    torch.testing.assert_close(w.log_scale.grad.float(), (upstream * w().detach()).sum())
    assert w.pos.grad.abs().sum() > 0 and w.neg.grad.abs().sum() > 0


def test_weights_up_front_give_the_same_outputs_and_gradients(nested, images):
    model = convert_(nested, 4)
    model.out.weight = QuantWeight(torch.rand(5, 16) * 2 - 1, torch.tensor(0.5), 3)  # a frozen layer too
    with torch.no_grad():
        for _, m in bit_layers(model):
            if isinstance(m.weight, BitWeight):
                m.weight.pos.uniform_(0, 2), m.weight.neg.uniform_(0, 2)
    twin = clone(model)
    expected = model(images)
    expected.square().sum().backward()
    with weights_up_front(twin):
        got = twin(images)
    got.square().sum().backward()
    assert torch.equal(got, expected)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=0, msg=name)


def test_weights_up_front_are_let_go_on_leaving_the_block_even_after_an_error(nested, images):
    model = convert_(nested, 4)
    with pytest.raises(RuntimeError, match="channels"):
        with weights_up_front(model):
            model(images[:, :2])  # wrong channel count
    assert all(m.weight.ready is None for _, m in bit_layers(model))
    before = model(images)
    with weights_up_front(model):
        assert torch.equal(model(images), before)
    with torch.no_grad():
        model.out.weight.pos.zero_(), model.out.weight.neg.zero_()
    out = model(images)  # planes changed after the block: the layer sees them, its output is its bias
    assert torch.equal(out, model.out.bias.detach().expand_as(out))
