"""bf16 training steps: only convolutions and matmuls change type; planes, scales, re-quantization
and evaluation stay float32."""
import copy

import pytest
import torch

from bsq_explore.bsq import bit_weights, requantize_
from bsq_explore.config import BSQConfig, preset
from bsq_explore.layers import convert_
from bsq_explore.models import not_shortcut, resnet20
from bsq_explore.train import COMPUTE_DTYPES, evaluate, laid_out, optimizer, train_step

BF16 = torch.bfloat16


def _converted():
    torch.manual_seed(0)
    return convert_(resnet20(act_bits=4), 8, filter_fn=not_shortcut)


def _conv_input_dtypes(model):
    """Record the dtype of every conv's input (the type its kernel runs in) while the hooks stay on."""
    seen = []
    for m in model.modules():
        if type(m).__name__ == "BitLayer" and m.kind == "conv":
            m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    return seen


def test_bf16_step_runs_convolutions_in_bf16_and_keeps_every_parameter_float32():
    model = _converted()
    seen = _conv_input_dtypes(model)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    opt = optimizer(model, preset("cifar10-resnet20"), lr=0.05)
    out, loss, reg = train_step(model, opt, x, y, alpha=5e-3, dtype=BF16)
    assert set(seen) == {BF16}, "convolutions run in bf16"
    assert loss.dtype == reg.dtype == torch.float32
    for name, p in model.named_parameters():
        assert p.dtype in (torch.float32, torch.float64), name  # log_scale is float64 by design
        assert p.grad is None or p.grad.dtype == p.dtype, name
    for _, w in bit_weights(model):
        assert w.compute().dtype == torch.float32 and w.scale.dtype == torch.float32
        assert w.pos.min() >= 0 and w.pos.max() <= 2  # clamped after the step, as in fp32


@pytest.mark.parametrize("precision, layout", [("bf16", torch.channels_last), ("fp32", torch.contiguous_format)])
def test_a_bf16_step_runs_the_network_channels_last_both_ways_and_an_fp32_step_as_it_was(precision, layout):
    """oneDNN's bf16 convolutions reorder NCHW in and out of each one; fp32 keeps its float sums. Backward
    too: global pooling's gradient is NCHW, and it must not reach the last stage's batch norms so."""
    model = _converted()
    config = preset("cifar10-resnet20-cpu", precision=precision)
    outs, grads = [], []

    def record(mod, args, out):
        outs.append(out.is_contiguous(memory_format=layout))
        out.register_hook(lambda g: grads.append(g.is_contiguous(memory_format=layout)))

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # fed by every convolution, the shortcuts' too
            m.register_forward_hook(record)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    train_step(model, optimizer(model, config, lr=0.05), laid_out(x, config), y, 5e-3, COMPUTE_DTYPES[precision])
    assert len(outs) == len(grads) == 21 and all(outs) and all(grads)


def test_laid_out_leaves_fp32_flat_and_own_models_batches_as_they_are():
    images, flat = torch.randn(4, 3, 8, 8), torch.randn(4, 64)
    bf16 = preset("cifar10-resnet20-cpu")
    assert laid_out(images, bf16).is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(laid_out(images, bf16), images)  # the same values, laid out anew
    for config, x in ((bf16.replace(precision="fp32"), images), (bf16, flat),
                      (bf16.replace(model="custom:Net"), images)):  # its .view() calls may need NCHW
        assert laid_out(x, config) is x


def test_requantizing_the_same_planes_gives_the_same_bits_after_an_fp32_or_a_bf16_step():
    model = _converted()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    opt = optimizer(model, preset("cifar10-resnet20"), lr=0.5)
    train_step(model, opt, x, y, alpha=1.0, dtype=BF16)  # planes leave {0, 1}
    twin = copy.deepcopy(model)
    table = requantize_(model, 8)
    with torch.autocast("cpu", BF16):  # even inside a bf16 region, re-quantization is float32 math
        twin_table = requantize_(twin, 8)
    assert table.equals(twin_table)
    for (_, a), (_, b) in zip(bit_weights(model), bit_weights(twin)):
        assert torch.equal(a.pos, b.pos) and torch.equal(a.neg, b.neg) and torch.equal(a.log_scale, b.log_scale)


def test_evaluation_runs_in_float32_whatever_the_training_precision():
    model = _converted()
    seen = _conv_input_dtypes(model)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    evaluate(model, x, y, batch_size=8)
    assert set(seen) == {torch.float32}


def test_a_bf16_forward_gives_the_fp32_loss_within_bf16_rounding():
    """The oracle: the same converted network and batch in float32 (float activations, since a
    4-bit quantizer turns rounding noise into whole levels). bf16 keeps 8 significant bits."""
    torch.manual_seed(0)
    model = convert_(resnet20(act_bits=0), 8, filter_fn=not_shortcut)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    losses = {}
    for dtype in (torch.float32, BF16):
        twin = copy.deepcopy(model)
        _, losses[dtype], _ = train_step(twin, optimizer(twin, preset("cifar10-resnet20"), lr=0.01), x, y, 0.0, dtype)
    assert losses[BF16].item() == pytest.approx(losses[torch.float32].item(), rel=0.02)
    assert losses[BF16].item() != losses[torch.float32].item()  # bf16 did run


def test_precision_is_a_checked_config_field():
    assert BSQConfig().precision == "fp32"
    assert BSQConfig(precision="bf16").precision == "bf16"
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        BSQConfig(precision="fp16")
