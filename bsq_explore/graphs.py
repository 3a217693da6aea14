"""The quantized model as an ONNX graph: QONNX's Quant nodes (FINN, hls4ml) or standard QCDQ nodes (onnxruntime)."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .bits import levels
from .layers import BitLayer, BitWeight, QuantWeight, replace_module
from .models import PACT, BasicBlock, CifarResNet, QuantReLU6

__all__ = ["to_qonnx", "to_qcdq", "quant_bits", "check_running_max", "QONNX_DOMAIN", "QCDQ_BITS"]

QONNX_DOMAIN = "qonnx.custom_op.general"  # where QONNX's Quant operator lives
_NO_RUNNING_MAX = "layer {} has no running max (the run predates it): its activation scale is unknown; retrain it to export"
# the kit's networks are written at opset 13, other models traced by torch.onnx at 18 (its lowest); each graph
# says the lowest IR version its opset needs: onnx would write its newest, which older runtimes refuse
_OPSET, _TRACED_OPSET = 13, 18
_IR_VERSION = {13: 7, 18: 8}
# what the kit's graph writer knows; a model made of anything else is traced
_WRITTEN = (nn.Sequential, CifarResNet, BasicBlock, nn.Identity, nn.Flatten, nn.ReLU, QuantReLU6, PACT, nn.MaxPool2d,
            nn.BatchNorm2d, BitLayer, BitWeight, QuantWeight, nn.Linear, nn.Conv2d)


def to_qonnx(model: nn.Module, input_shape: tuple[int, ...], batch: int = 1):
    """model, float or converted, as an onnx.ModelProto for inputs of shape (batch, *input_shape):
    QONNX tools (FINN among them) take fixed shapes, batch 1 by default. The kit's own networks
    (mlp, lenet5, the CIFAR ResNets) are written module by module, their activation quantizers
    included; any other model (a torchvision one, your own) is traced by torch.onnx.export.

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

    if not all(type(m) in _WRITTEN for m in model.modules()):  # exactly: a subclass may have a forward of its own
        return _with_shapes(_traced(model, input_shape, batch))
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
        ir_version=_IR_VERSION[_OPSET])
    return _with_shapes(proto)


def _traced(model: nn.Module, input_shape: tuple[int, ...], batch: int):
    """model traced by torch.onnx.export with each converted layer as a float layer holding its
    quantized weight; then each such weight, an initializer named after its layer, becomes the
    output of a Quant node as the kit's own graphs have it."""
    from onnx import helper

    quantizers = sorted({type(m).__name__ for m in model.modules() if isinstance(m, (QuantReLU6, PACT))})
    if quantizers:
        raise ValueError(f"QONNX export traces {type(model).__name__}, and cannot trace its activation quantizers "
                         f"({', '.join(quantizers)}): those export within the kit's own networks")
    plain, layers = copy.deepcopy(model).eval(), {}
    for name, m in [(n, m) for n, m in plain.named_modules() if isinstance(m, BitLayer)]:
        layers[name] = m
        replace_module(plain, name, _float_layer(m))
    with torch.no_grad():
        # optimize=False: with the exporter's optimizer the traced ResNet-18 of the tests no longer matched PyTorch
        proto = torch.onnx.export(plain, (torch.zeros(batch, *input_shape),), dynamo=True, optimize=False,
                                  opset_version=_TRACED_OPSET, input_names=["input"], verbose=False).model_proto
    shapes = {t.name: list(t.dims) for t in proto.graph.initializer}
    del proto.graph.value_info[:]  # the tracer's shapes: _with_shapes infers them again, Quant nodes included
    for node in proto.graph.node:  # QONNX's lowering needs each Conv's kernel shape, which the tracer leaves out
        del node.metadata_props[:]  # the tracer's stack traces: this machine's file paths
        if node.op_type == "Conv" and not any(a.name == "kernel_shape" for a in node.attribute):
            node.attribute.append(helper.make_attribute("kernel_shape", shapes[node.input[1]][2:]))
    quant = _Graph()  # each converted weight, named as the tracer named it: its consumers read the Quant node
    for name, m in layers.items():
        quant._weight(name, m)
    weights = {f"{name}.weight" for name in layers}
    if missing := weights - {t.name for t in proto.graph.initializer}:
        raise ValueError(f"torch.onnx.export renamed the weights of {', '.join(sorted(missing))}: they cannot be quantized")
    kept = [t for t in proto.graph.initializer if t.name not in weights]
    nodes = quant.nodes + list(proto.graph.node)  # Quant nodes read initializers only: first is in order
    del proto.graph.node[:], proto.graph.initializer[:]
    proto.graph.node.extend(nodes)
    proto.graph.initializer.extend(kept + quant.initializers)
    proto.opset_import.append(helper.make_opsetid(QONNX_DOMAIN, 1))
    proto.ir_version = _IR_VERSION[_TRACED_OPSET]
    return proto


def _float_layer(m: BitLayer) -> nn.Module:
    """A plain Conv2d or Linear computing what the converted layer m computes (its quantized weight)."""
    weight = m.weight().detach()
    if m.kind == "conv":
        layer = nn.Conv2d(weight.shape[1] * m.op_args["groups"], weight.shape[0], tuple(weight.shape[2:]),
                          bias=m.bias is not None, **m.op_args)
    else:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=m.bias is not None)
    layer.weight = nn.Parameter(weight)
    if m.bias is not None:
        layer.bias = nn.Parameter(m.bias.detach())
    return layer


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
        return self._layer(name, m, x)  # a BitLayer, nn.Linear or nn.Conv2d: to_qonnx sends nothing else (_WRITTEN)

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


QCDQ_BITS = 8  # QuantizeLinear's integers: int8 and uint8


def to_qcdq(model: nn.Module, input_shape: tuple[int, ...], batch: int = 1):
    """to_qonnx, then each Quant node as QuantizeLinear -> Clip -> DequantizeLinear (QONNX's
    QuantToQCDQ): a graph of standard ONNX operators that onnxruntime runs without QONNX.

    QuantizeLinear holds at most 8-bit integers: a layer of 8 magnitude bits is 9 with its sign, so
    its weight stays as its plain float values (the same numbers: they lie on its grid already).

    Returns:
        (the onnx.ModelProto, {layer: bits} of the layers whose weights stayed float).
    """
    from onnx import numpy_helper

    proto = to_qonnx(model, input_shape, batch)  # first: without qonnx, its one-line error says what to install
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.qonnx_to_qcdq import QuantToQCDQ

    wide = {layer: bits for layer, bits in quant_bits(proto.graph).items() if bits + 1 > QCDQ_BITS}
    for layer in wide:  # its Quant node goes; the values it would round, already on the grid, take its name
        node = next(n for n in proto.graph.node if n.op_type == "Quant" and n.output[0] == f"{layer}.weight")
        proto.graph.node.remove(node)
        values = next(t for t in proto.graph.initializer if t.name == node.input[0])
        values.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(values), f"{layer}.weight"))
    proto = ModelWrapper(proto).transform(QuantToQCDQ()).model
    if any(n.op_type == "Quant" for n in proto.graph.node):
        raise ValueError("an activation quantizer of more than 8 bits has no QCDQ form; use the QONNX export")
    return proto, wide


def check_running_max(exported: dict) -> None:
    """A ValueError when an activation of an export() has no running max, before any model is built:
    QONNX needs each activation's fixed scale (see to_qonnx)."""
    for key, value in exported["state"].items():
        if key.endswith(".running_max") and value.isnan().any():
            raise ValueError(_NO_RUNNING_MAX.format(key.removesuffix(".running_max")))
