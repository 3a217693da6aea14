"""Networks of the kit: mlp, lenet5 and the CIFAR ResNets (20/32/56), with optional activation quantization."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .bits import levels, quantize
from .config import ACT_BITS_RULE, CUSTOM, TORCHVISION, act_bits_ok

__all__ = ["QuantReLU6", "PACT", "activation", "mlp", "lenet5", "BasicBlock", "CifarResNet", "resnet20", "resnet32",
           "resnet56", "steps", "find_step", "not_shortcut", "build_model", "torchvision_classifiers", "check_model",
           "torchvision_model", "convert_filter"]


class QuantReLU6(nn.Module):
    """ReLU6, then a k-bit uniform quantizer on [0, batch max] with a straight-through gradient.

    The batch max is the paper's scale, in training and evaluation alike, so a prediction depends
    on its batch. Training also keeps running_max, a running average of the batch max (as batch
    norm keeps its statistics, momentum 0.1), the fixed scale a deployed graph uses (graphs.to_qonnx).
    """
    MOMENTUM = 0.1

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits
        self.register_buffer("running_max", torch.tensor(float("nan")))  # nan: no training batch seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, top = _QuantReLU6.apply(x, self.bits)
        if self.training:  # without a host sync: where() instead of an if on the value
            blend = (1 - self.MOMENTUM) * self.running_max + self.MOMENTUM * top
            self.running_max.copy_(torch.where(self.running_max.isnan(), top, blend))
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args):
        state_dict.setdefault(prefix + "running_max", torch.tensor(float("nan")))  # a run from before it existed
        super()._load_from_state_dict(state_dict, prefix, *args)


class _QuantReLU6(torch.autograd.Function):
    """top * Q_k(relu6(x) / top), top = the batch max; the gradient passes straight through inside (0, 6).

    In place after relu6 and one pass backward (the quantizer was a quarter of a ResNet-20 step
    written as plain autograd ops), in x's type: under bf16 autocast a float32 copy would cost more
    memory traffic than the bf16 arithmetic it replaces.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = F.relu6(x)
        top = a.amax().clamp_min(1e-8)
        n = levels(bits)
        out = a.div_(top).mul_(n).round_().div_(n).mul_(top)  # a / top <= 1: no clamp needed
        ctx.save_for_backward(x)
        ctx.mark_non_differentiable(top)
        return out, top

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor, _) -> tuple[torch.Tensor, None]:
        x, = ctx.saved_tensors
        # grad where 0 < x < 6, else 0, laid out as x: a head whose backward gives another memory layout
        # (global pooling's is NCHW under channels_last) would otherwise send it down the shortcuts above
        return torch.ops.aten.hardtanh_backward.grad_input(grad, x, 0.0, 6.0, grad_input=torch.empty_like(x)), None


class PACT(nn.Module):
    """PACT (Choi et al. 2018): clip to a learned [0, alpha], then a k-bit uniform quantizer (STE)."""

    def __init__(self, bits: int, alpha: float = 6.0):
        super().__init__()
        self.bits = bits
        self.alpha = nn.Parameter(torch.tensor(alpha))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.minimum(F.relu(x), self.alpha)
        # straight through the whole quantizer, so d/d alpha = 1 where x > alpha and 0 elsewhere (PACT)
        return y + (self.alpha * quantize(y / self.alpha, self.bits) - y).detach()


def activation(act_bits: int) -> nn.Module:
    """0: float ReLU; 4 bits or more: ReLU6 + batch-max quantizer (paper); 1-3 bits: PACT clipping."""
    if act_bits == 0:
        return nn.ReLU()
    if not act_bits_ok(act_bits):
        raise ValueError(f"{ACT_BITS_RULE}, got {act_bits!r}")
    return QuantReLU6(act_bits) if act_bits >= 4 else PACT(act_bits)


def mlp(in_features: int = 64, hidden: tuple[int, ...] = (256, 128), num_classes: int = 10,
        act_bits: int = 0) -> nn.Sequential:
    """Flatten, then Linear fc1.. + activation per hidden width, then a Linear classifier."""
    layers: dict[str, nn.Module] = {"flatten": nn.Flatten()}
    for i, width in enumerate(hidden, 1):
        layers[f"fc{i}"], layers[f"act{i}"] = nn.Linear(in_features, width), activation(act_bits)
        in_features = width
    layers[f"fc{len(hidden) + 1}"] = nn.Linear(in_features, num_classes)
    return nn.Sequential(OrderedDict(layers))


def lenet5(in_channels: int = 1, num_classes: int = 10, image_size: int = 28, act_bits: int = 0) -> nn.Sequential:
    """LeNet-5 with 'same' 5x5 convolutions, so it fits any image size divisible by 4 (8x8 digits too)."""
    side = image_size // 4
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(in_channels, 6, 5, padding=2), act1=activation(act_bits), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(6, 16, 5, padding=2), act2=activation(act_bits), pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(),
        fc1=nn.Linear(16 * side * side, 120), act3=activation(act_bits),
        fc2=nn.Linear(120, 84), act4=activation(act_bits),
        fc3=nn.Linear(84, num_classes),
    ))


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm; a 1x1 conv + BN 'downsample' shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, act_bits: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = activation(act_bits)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else nn.Identity())
        self.act2 = activation(act_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.downsample(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 images (He et al. 2016): 3 stages of 16, 32, 64 channels, (depth - 2) / 6 blocks each."""

    def __init__(self, depth: int, num_classes: int = 10, act_bits: int = 0, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = activation(act_bits)
        stages, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            stages.append(nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, act_bits)
                                          for i in range(blocks)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, step in self.steps():  # the chain What-if re-runs in part: one definition, so the two cannot differ
            x = step(x)
        return x

    def steps(self) -> list[tuple[tuple[str, ...], Callable]]:
        """forward() as a chain of steps: the stem, each block, the head; see models.steps."""
        blocks = [((f"{stage}.{i}",), block) for stage in ("layer1", "layer2", "layer3")
                  for i, block in enumerate(self.get_submodule(stage))]
        return [(("conv1", "bn1", "act1"), lambda x: self.act1(self.bn1(self.conv1(x)))), *blocks,
                (("fc",), lambda x: self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))]


def resnet20(num_classes: int = 10, act_bits: int = 0) -> CifarResNet:
    return CifarResNet(20, num_classes, act_bits)


def resnet32(num_classes: int = 10, act_bits: int = 0) -> CifarResNet:
    return CifarResNet(32, num_classes, act_bits)


def resnet56(num_classes: int = 10, act_bits: int = 0) -> CifarResNet:
    return CifarResNet(56, num_classes, act_bits)


def steps(model: nn.Module) -> list[tuple[tuple[str, ...], Callable]]:
    """model's forward pass as a chain of steps, each (the names of the modules it runs, the step), so
    that a change to one layer re-runs only the steps from the one that holds it (analysis.WhatIf).
    A Sequential is a step per child; a model the kit does not know is one step, named "" (every module)."""
    if type(model) is CifarResNet:  # exactly: a subclass may have a forward of its own
        return model.steps()
    if type(model) is nn.Sequential:
        return [((name,), child) for name, child in model.named_children()]
    return [(("",), model)]


def find_step(chain: list[tuple[tuple[str, ...], Callable]], layer: str) -> int:
    """The place in chain (a steps() list) of the step that runs the module named layer."""
    return next(i for i, (names, _) in enumerate(chain) if any(n in ("", layer) or layer.startswith(n + ".")
                                                               for n in names))


def not_shortcut(module: nn.Module, name: str) -> bool:
    """convert_ filter of the paper's ResNet recipe: the 1x1 downsample shortcuts stay in float."""
    return "downsample" not in name.split(".")


def build_model(config, data) -> nn.Module:
    """The network config.model names, sized for data's image shape and classes (a data.Dataset)."""
    if config.model.startswith(CUSTOM):
        check_model(config.model)  # says why the kit cannot build it
    c, h, w = data.shape
    classes = len(data.classes)
    if config.model == "mlp":
        return mlp(c * h * w, num_classes=classes, act_bits=config.act_bits)
    if config.model == "lenet5":
        return lenet5(c, classes, image_size=h, act_bits=config.act_bits)
    if config.model.startswith(TORCHVISION):
        return torchvision_model(config.model.removeprefix(TORCHVISION), c, classes)
    return CifarResNet(int(config.model.removeprefix("resnet")), classes, config.act_bits, in_channels=c)


def torchvision_classifiers() -> list[str]:
    """The names torchvision's get_model builds as image classifiers."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_model(name: str) -> None:
    """A torchvision:NAME that torchvision lacks is a ValueError listing the names it has; a custom:NAME
    (recorded by fit) is one too, since only fit, given the model itself, can train it."""
    if name.startswith(CUSTOM):
        raise ValueError(f"model {name!r} was given to fit(): the kit cannot build it (train it with "
                         "bsq_explore.fit(model, train, test); export.load_quantized loads its model.pt into yours)")
    if name.startswith(TORCHVISION) and name.removeprefix(TORCHVISION) not in torchvision_classifiers():
        raise ValueError(f"torchvision has no classifier {name.removeprefix(TORCHVISION)!r}; choose one of: "
                         f"{', '.join(torchvision_classifiers())}")


def torchvision_model(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """A torchvision classifier, untrained (weights=None: nothing downloads), with num_classes
    outputs and its first convolution re-made for in_channels when that is not 3. Its activations
    stay float: act_bits applies to the kit's own models."""
    import torchvision

    check_model(TORCHVISION + name)
    extra = {"aux_logits": False} if name in ("googlenet", "inception_v3") else {}  # one output, not a tuple
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
    if in_channels != 3:
        path, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
        parent, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent), attr, nn.Conv2d(
            in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
            conv.bias is not None))
    return model


def convert_filter(config):
    """The convert_ filter of config's recipe: the layers config.float_layers names (fnmatch
    patterns) stay float, and so do a kit ResNet's downsample shortcuts (the paper's recipe);
    None when every layer converts."""
    import fnmatch

    patterns = [p.strip() for p in config.float_layers.split(",") if p.strip()]
    shortcuts = config.model.startswith("resnet")
    if not patterns and not shortcuts:
        return None

    def keep(module: nn.Module, name: str) -> bool:
        return not any(fnmatch.fnmatchcase(name, p) for p in patterns) and (not shortcuts or not_shortcut(module, name))
    return keep
