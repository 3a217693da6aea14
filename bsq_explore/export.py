"""The trained model out of the kit: integer export and its loading, and QONNX graphs."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .bits import levels
from .config import MODELS
from .layers import BitLayer, QuantWeight, bit_layers, replace_module
from .models import PACT, BasicBlock, CifarResNet, QuantReLU6, build_model

__all__ = ["export", "load_quantized", "load_layers_", "load_model", "check_running_max", "to_qonnx", "quant_bits",
           "EXPORT_FORMAT", "QONNX_DOMAIN"]

EXPORT_FORMAT = "bsq_explore.quantized/1"


def _int_dtype(nbits: int) -> torch.dtype:
    return torch.int8 if nbits <= 7 else torch.int16 if nbits <= 15 else torch.int32


@torch.no_grad()
def export(model: nn.Module) -> dict:
    """The mixed-precision model as plain data (torch.load(weights_only=True) reads it back).

    Args:
        model: a converted model, in BSQ (bit planes) or finetuning (frozen precision).

    Returns:
        dict(format, layers, state). layers: {name: {kind, nbits, scale, lsb_offset, q}} with q the
        signed integer weight, |q| <= 2^nbits - 1, stored in the smallest integer dtype that holds
        it; W = scale q / (2^n - 1). state: every other tensor of the model (biases, batch norm,
        layers left in float). load_quantized puts it back into a model.

    Example:
        >>> torch.save(export(model), "model.pt")
        >>> load_quantized(resnet20(act_bits=4), torch.load("model.pt", weights_only=True))
    """
    layers, skip = {}, []
    for name, m in bit_layers(model):
        q, nbits = m.weight.integers(), m.weight.live_bits()
        layers[name] = dict(kind=m.kind, nbits=nbits, scale=float(m.weight.scale) if nbits else 0.0,
                            lsb_offset=m.weight.lsb_offset, q=q.to(_int_dtype(nbits)).cpu())
        skip.append(name + ".weight.")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith(tuple(skip))}
    return dict(format=EXPORT_FORMAT, layers=layers, state=state)


@torch.no_grad()
def load_quantized(model: nn.Module, exported: dict) -> nn.Module:
    """Load an export() into model (a float model of the same architecture, or a converted one).

    The named layers become QuantWeight layers at their exported precision; the result computes
    exactly what the exported model computed.
    """
    if exported.get("format") != EXPORT_FORMAT:
        raise ValueError(f"not a bsq_explore export (format {exported.get('format')!r})")
    weights = load_layers_(model, exported["layers"])
    model.load_state_dict({**exported["state"], **{f"{name}.weight.{k}": v for name, w in weights.items()
                                                    for k, v in w.state_dict().items()}})
    return model


def load_layers_(model: nn.Module, layers: dict) -> dict[str, QuantWeight]:
    """Make each layer of layers (an export()'s "layers", or some of them) a QuantWeight layer with its
    integers and scale; the other layers and every other tensor stay as they are. Returns the new weights."""
    weights = {}
    for name, spec in layers.items():
        module = model.get_submodule(name)
        like = next(module.parameters())  # device and dtype to build on
        scale = torch.tensor(spec["scale"], dtype=like.dtype, device=like.device)  # 0 for a 0-bit layer
        weights[name] = QuantWeight.from_integers(spec["q"].to(like.device), scale, spec["nbits"], spec["lsb_offset"])
        if isinstance(module, BitLayer):
            module.weight = weights[name]
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            replace_module(model, name, BitLayer(module, weights[name]))
        else:
            raise ValueError(f"layer {name!r} is a {type(module).__name__}, not a conv or linear layer")
    return weights


QONNX_DOMAIN = "qonnx.custom_op.general"  # where QONNX's Quant operator lives
_OPSET = 13
_NO_RUNNING_MAX = "layer {} has no running max (the run predates it): its activation scale is unknown; retrain it to export"
_IR_VERSION = 7  # the lowest IR that opset 13 needs; onnx would write its newest, which older runtimes refuse


def to_qonnx(model: nn.Module, input_shape: tuple[int, ...], batch: int = 1):
    """model, one of the kit's networks (mlp, lenet5, the CIFAR ResNets), float or converted, as an
    onnx.ModelProto for inputs of shape (batch, *input_shape): QONNX tools (FINN among them) take
    fixed shapes, batch 1 by default.

    An n-bit layer's weight W = s q / (2^n - 1), |q| <= 2^n - 1, enters its Gemm or Conv through
    Quant(W, scale s / (2^n - 1), zero point 0, bit width n + 1, signed, narrow range): the n + 1-bit
    signed integers without -2^n are exactly the range of q, so the graph computes W. A layer BSQ
    emptied (0 bits) is a weight of zeros; a layer left in float is a plain Gemm or Conv.

    Args:
        model: the network, in eval mode or not (it is sized in eval mode and its mode restored).
        input_shape: one input's shape, (3, 32, 32) for CIFAR-10.
        batch: the graph's fixed batch size.

    Returns:
        The onnx.ModelProto; its SerializeToString() is the .onnx file.

    Example:
        >>> proto = to_qonnx(load_model(run, data).eval(), (3, 32, 32))
        >>> open("resnet20.onnx", "wb").write(proto.SerializeToString())
    """
    from onnx import TensorProto, helper

    graph = _Graph()
    x = graph.module("", model, "input")
    training = model.training
    with torch.no_grad():  # in eval mode: a training-mode pass would move the running maxes
        classes = model.eval()(torch.zeros(1, *input_shape)).shape[1]
    model.train(training)
    proto = helper.make_model(
        helper.make_graph(graph.nodes, "bsq_explore",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, *input_shape])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, classes])], graph.initializers),
        producer_name="bsq_explore", opset_imports=[helper.make_opsetid("", _OPSET), helper.make_opsetid(QONNX_DOMAIN, 1)],
        ir_version=_IR_VERSION)
    return _with_shapes(proto)


class _Graph:
    """The nodes and initializers of a graph being written, module by module."""

    def __init__(self):
        self.nodes, self.initializers = [], []

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def module(self, name: str, m: nn.Module, x: str) -> str:
        """Write m applied to the tensor x; returns its output's name. name: m's path in the model."""
        path = (lambda child: f"{name}.{child}" if name else child)  # noqa: E731
        if isinstance(m, nn.Sequential):
            for child, sub in m.named_children():
                x = self.module(path(child), sub, x)
            return x
        if isinstance(m, CifarResNet):
            x = self.module(path("act1"), m.act1, self.module(path("bn1"), m.bn1, self.module(path("conv1"), m.conv1, x)))
            for stage in ("layer1", "layer2", "layer3"):
                x = self.module(path(stage), getattr(m, stage), x)
            x = self.node("Flatten", [self.node("GlobalAveragePool", [x], path("pool"))], path("flatten"), axis=1)
            return self.module(path("fc"), m.fc, x)
        if isinstance(m, BasicBlock):
            out = self.module(path("act1"), m.act1, self.module(path("bn1"), m.bn1, self.module(path("conv1"), m.conv1, x)))
            out = self.module(path("bn2"), m.bn2, self.module(path("conv2"), m.conv2, out))
            added = self.node("Add", [out, self.module(path("downsample"), m.downsample, x)], path("add"))
            return self.module(path("act2"), m.act2, added)
        return self._leaf(name, m, x)

    def _leaf(self, name: str, m: nn.Module, x: str) -> str:
        """Write a module with no modules inside (a layer, a norm, an activation, a pooling)."""
        out = f"{name}.out"
        if isinstance(m, nn.Identity):
            return x
        if isinstance(m, nn.Flatten):
            return self.node("Flatten", [x], out, axis=1)
        if isinstance(m, nn.ReLU):
            return self.node("Relu", [x], out)
        if isinstance(m, (QuantReLU6, PACT)):
            return self._activation(name, m, x)
        if isinstance(m, nn.MaxPool2d):
            k, s, p = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding))
            return self.node("MaxPool", [x], out, kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
        if isinstance(m, nn.BatchNorm2d):  # eval mode: its running statistics
            tensors = [self.const(f"{name}.{k}", getattr(m, k).detach().cpu())
                       for k in ("weight", "bias", "running_mean", "running_var")]
            return self.node("BatchNormalization", [x, *tensors], out, epsilon=m.eps)
        if isinstance(m, (BitLayer, nn.Linear, nn.Conv2d)):
            return self._layer(name, m, x)
        raise ValueError(f"QONNX export does not know {type(m).__name__} (layer {name or 'the model'}); it takes "
                         f"the kit's own networks ({', '.join(MODELS)})")

    def _layer(self, name: str, m: nn.Module, x: str) -> str:
        """Write a Gemm or Conv (a converted layer's weight through its Quant node)."""
        inputs, out = [x, self._weight(name, m)], f"{name}.out"
        if m.bias is not None:
            inputs.append(self.const(f"{name}.bias", m.bias.detach().cpu()))
        if isinstance(m, nn.Linear) or getattr(m, "kind", "") == "linear":
            return self.node("Gemm", inputs, out, transB=1)
        args = m.op_args if isinstance(m, BitLayer) else dict(
            stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups)
        if isinstance(args["padding"], str):
            raise ValueError(f"layer {name}: padding={args['padding']!r} is not exported; use numbers")
        return self.node("Conv", inputs, out, kernel_shape=list(m.weight.shape[2:]), strides=list(args["stride"]),
                         pads=list(args["padding"]) * 2, dilations=list(args["dilation"]), group=args["groups"])

    def _activation(self, name: str, m: nn.Module, x: str) -> str:
        """Clip to [0, top], then an unsigned k-bit Quant with scale top / (2^k - 1): the quantizer's
        grid at a fixed top, PACT's learned alpha or QuantReLU6's running max (the engine itself
        scales by each batch's max, which a deployed graph cannot)."""
        if isinstance(m, PACT):
            top = clip = float(m.alpha.detach())
        else:
            top, clip = float(m.running_max), 6.0
            if top != top:  # nan
                raise ValueError(_NO_RUNNING_MAX.format(name))
        clipped = self.node("Clip", [x, self.const(f"{name}.min", 0.0), self.const(f"{name}.max", clip)],
                            f"{name}.clipped")
        return self.node("Quant", [clipped, self.const(f"{name}.scale", top / levels(m.bits)),
                                   self.const(f"{name}.zeropt", 0.0), self.const(f"{name}.bits", m.bits)],
                         f"{name}.out", domain=QONNX_DOMAIN, signed=0, narrow=0, rounding_mode="ROUND")

    def _weight(self, name: str, m: nn.Module) -> str:
        """The name of layer m's weight in the graph: a Quant node's output for a converted layer."""
        if not isinstance(m, BitLayer):
            return self.const(f"{name}.weight", m.weight.detach().cpu())
        nbits, q = m.weight.live_bits(), m.weight.integers().detach().cpu().double()
        if nbits == 0:
            return self.const(f"{name}.weight", torch.zeros(q.shape))
        step = float(m.weight.scale.detach()) / levels(nbits)
        inputs = [self.const(f"{name}.weight_float", q * step), self.const(f"{name}.weight_scale", step),
                  self.const(f"{name}.weight_zeropt", 0.0), self.const(f"{name}.weight_bits", nbits + 1)]
        return self.node("Quant", inputs, f"{name}.weight", domain=QONNX_DOMAIN, signed=1, narrow=1,
                         rounding_mode="ROUND")


def _with_shapes(proto):
    """proto with every tensor's shape filled in by QONNX (onnx's own inference does not know Quant)."""
    try:
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.transformation.infer_shapes import InferShapes
    except ImportError:
        raise ValueError("QONNX export needs qonnx: pip install 'bsq_explore[qonnx]'") from None
    return ModelWrapper(proto).transform(InferShapes()).model


def quant_bits(graph) -> dict[str, int]:
    """{layer: bits} read back from a QONNX graph: each weight Quant node's bit width minus its sign bit."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return {node.output[0].removesuffix(".weight"): int(values[node.input[3]]) - 1
            for node in graph.node if node.op_type == "Quant" and node.output[0].endswith(".weight")}


def load_model(run, data=None) -> nn.Module:
    """The final quantized model of a finished run (a runs.Run): its model.pt loaded into its
    architecture, built for data (a data.Dataset; default: the image shape and classes its run.json
    records, so that no image is read, else its dataset, loaded)."""
    from .data import described, load_for

    data = data or described(run.info.get("data")) or load_for(run.config)
    model = build_model(run.config, data)
    load_quantized(model, run.read_model())
    return model


def check_running_max(exported: dict) -> None:
    """A ValueError when an activation of an export() has no running max, before any model is built:
    QONNX needs each activation's fixed scale (see to_qonnx)."""
    for key, value in exported["state"].items():
        if key.endswith(".running_max") and value.isnan().any():
            raise ValueError(_NO_RUNNING_MAX.format(key.removesuffix(".running_max")))
