"""Model shapes and the activation quantizers."""
import pytest
import torch

from bsq_explore import models


@pytest.mark.parametrize("build, depth_convs", [(models.resnet20, 19), (models.resnet32, 31), (models.resnet56, 55)])
def test_cifar_resnets(build, depth_convs):
    model = build(act_bits=4)
    convs = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and "downsample" not in n]
    assert len(convs) == depth_convs  # depth = 3x3 convs + the final fc
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in models.resnet20().parameters()) == pytest.approx(272_474, rel=0.01)


def test_mlp_and_lenet_shapes():
    assert models.mlp()(torch.randn(5, 64)).shape == (5, 10)
    assert models.lenet5()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert models.lenet5(image_size=8)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_quant_relu6_lands_on_the_grid_of_the_batch_max():
    act = models.activation(4)
    x = torch.tensor([-1.0, 0.5, 1.0, 2.9, 3.0, 9.0], requires_grad=True)
    y = act(x)
    grid = 6.0 / 15  # relu6 caps the batch max at 6
    assert torch.allclose(y / grid, torch.round(y / grid)) and y.max() == 6.0 and y.min() == 0
    y.sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 0]  # ReLU6's gradient, rounding straight through


def test_pact_learns_its_clip():
    act = models.activation(2)
    assert isinstance(act, models.PACT)
    x = torch.tensor([1.5, 7.0, 8.0])
    y = act(x)
    assert y.tolist() == pytest.approx([2.0, 6.0, 6.0])  # grid 6/3 = 2
    y.sum().backward()
    assert act.alpha.grad.item() == pytest.approx(2.0)  # one per input clipped at alpha


def test_float_activation_and_bad_bits():
    assert isinstance(models.activation(0), torch.nn.ReLU)
    with pytest.raises(ValueError, match="act_bits"):
        models.activation(-2)


def test_a_torchvision_classifier_is_built_untrained_for_the_datasets_channels_and_classes():
    from bsq_explore.models import torchvision_model

    model = torchvision_model("resnet18", in_channels=1, num_classes=7)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match="torchvision has no classifier 'nope'; choose one of: alexnet, .*resnet18"):
        torchvision_model("nope", 3, 10)


def test_float_layers_names_the_layers_convert_leaves_in_float():
    from bsq_explore.config import preset
    from bsq_explore.layers import bit_layers, convert_
    from bsq_explore.models import convert_filter, lenet5, resnet20

    model = convert_(lenet5(), 8, filter_fn=convert_filter(preset("digits-cnn", float_layers="conv*, fc3")))
    assert [name for name, _ in bit_layers(model)] == ["fc1", "fc2"]
    model = convert_(resnet20(), 8, filter_fn=convert_filter(preset("cifar10-resnet20", float_layers="fc")))
    names = [name for name, _ in bit_layers(model)]
    assert "fc" not in names and not any("downsample" in n for n in names) and len(names) == 19  # the 3x3 convs


def test_quant_relu6_keeps_a_running_max_in_training_only_and_old_runs_load_without_it():
    act = models.QuantReLU6(4)
    assert act.running_max.isnan()
    a, b = torch.full((3,), 2.0), torch.full((3,), 4.0)
    act(a)
    assert act.running_max.item() == 2.0  # the first batch's max
    act(b)
    assert act.running_max.item() == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)  # then a running average, momentum 0.1
    act.eval()
    out = act(torch.tensor([1.0, 3.0]))
    assert act.running_max.item() == pytest.approx(2.2) and out.tolist() == pytest.approx([1.0, 3.0])  # batch max 3
    old = models.QuantReLU6(4)
    old.load_state_dict({})  # a model.pt from before running_max existed
    assert old.running_max.isnan()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quant_relu6_gives_the_formulas_values_and_the_straight_through_gradient_inside_0_6(dtype):
    """The oracles: the quantizer's formula in plain ops (ReLU6, batch max, Q_k), in x's type; the
    straight-through gradient, by hand: grad where 0 < x < 6, else 0."""
    from bsq_explore.bits import quantize

    torch.manual_seed(0)
    x = (torch.randn(4, 8, 6, 6) * 3).to(dtype)
    x[0, 0, 0, :3] = torch.tensor([0.0, 6.0, -1.0])  # the edges of ReLU6's straight-through range
    grad = torch.randn(x.shape).to(dtype)
    mine = x.clone().requires_grad_()
    out = models.QuantReLU6(4)(mine)
    out.backward(grad)
    a = torch.nn.functional.relu6(x)
    top = a.amax().clamp_min(1e-8)
    assert out.dtype == dtype and torch.equal(out, top * quantize(a / top, 4))
    assert mine.grad.dtype == dtype and torch.equal(mine.grad, torch.where((x > 0) & (x < 6), grad, 0))


def test_quant_relu6_gives_its_gradient_the_layout_of_its_input():
    """Global pooling's backward is NCHW: under channels_last, the quantizer after the last block must
    not pass that layout on down the shortcuts (batch norm's backward is slow on mixed layouts)."""
    x = (torch.randn(2, 4, 3, 3) * 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    inner = x * 1  # not a leaf: the gradient as the quantizer's backward returns it
    seen = []
    inner.register_hook(seen.append)
    models.QuantReLU6(4)(inner).backward(torch.ones(2, 4, 3, 3))  # an NCHW gradient arrives
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(seen[0], ((x > 0) & (x < 6)).float())  # and the values read through both layouts


@pytest.mark.parametrize("build, shape", [(lambda: models.resnet20(act_bits=4), (6, 3, 32, 32)),
                                          (lambda: models.lenet5(act_bits=4), (6, 1, 28, 28)),
                                          (models.mlp, (6, 64)),
                                          (lambda: models.torchvision_model("resnet18", 3, 10), (6, 3, 32, 32))])
def test_steps_chain_to_the_forward_pass_and_hold_each_layer_once(build, shape):
    torch.manual_seed(0)
    model, x = build().eval(), torch.randn(shape)
    out = x
    for _, step in models.steps(model):
        out = step(out)
    assert torch.equal(out, model(x))
    names = [names for names, _ in models.steps(model)]
    for layer in (n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))):
        held = [i for i, step_names in enumerate(names)
                if any(n in ("", layer) or layer.startswith(n + ".") for n in step_names)]
        assert len(held) == 1, layer
    assert len(names) == {"CifarResNet": 11, "Sequential": len(list(model.children()))}.get(type(model).__name__, 1)


def test_a_sequential_subclass_with_its_own_forward_is_one_step():
    class Residual(torch.nn.Sequential):  # its forward adds the input back: not a chain of its children
        def forward(self, x):
            return x + super().forward(x)

    model = Residual(torch.nn.Linear(4, 4), torch.nn.ReLU()).eval()
    (names, step), = models.steps(model)
    x = torch.randn(3, 4)
    assert names == ("",) and torch.equal(step(x), model(x))
