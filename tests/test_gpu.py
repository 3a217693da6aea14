"""CUDA runs the same code as the CPU: a few BSQ steps agree within tolerance (skipped without CUDA)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from bsq_explore.bsq import bit_lasso, clamp_bits_, requantize_
from bsq_explore.layers import bit_layers, convert_
from bsq_explore.models import not_shortcut, resnet20
from bsq_explore.stats import bit_sparsity

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def steps(model, x, y, n=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(n):
        loss = F.cross_entropy(model(x), y) + 5e-3 * bit_lasso(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        clamp_bits_(model)
        losses.append(loss.item())
    return losses


def test_bsq_steps_on_cuda_match_cpu():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    cpu = convert_(resnet20(), 8, filter_fn=not_shortcut)  # float activations: no rounding to amplify noise
    gpu = copy.deepcopy(cpu).cuda()
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    assert steps(cpu, x, y) == pytest.approx(steps(gpu, x.cuda(), y.cuda()), rel=1e-3)
    for (name, a), (_, b) in zip(bit_layers(cpu), bit_layers(gpu)):
        torch.testing.assert_close(b.weight.pos.cpu(), a.weight.pos, atol=1e-4, rtol=1e-3, msg=name)
    requantize_(cpu), requantize_(gpu)
    cpu_bits, gpu_bits = bit_sparsity(cpu), bit_sparsity(gpu)
    assert cpu_bits[["layer", "bit", "nbits"]].equals(gpu_bits[["layer", "bit", "nbits"]])
    assert (cpu_bits.density - gpu_bits.density).abs().max() < 1e-3
