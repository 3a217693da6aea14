"""QONNX export: a converted model as an ONNX graph with a Quant node at each layer's own bit width."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .layers import BitLayer
from .models import PACT, QuantReLU6

QONNX_DOMAIN = "qonnx.custom_op.general"  # where QONNX's Quant operator lives
OPSET = 13
MODELS = ("mlp", "lenet5")  # the kit's models to_qonnx takes: the sequential ones


def to_qonnx(model: nn.Module, input_shape: tuple[int, ...], batch: int = 1):
    """model, an nn.Sequential of Flatten, ReLU, the kit's activation quantizers, MaxPool2d, Linear
    and Conv2d layers and their converted twins (the kit's mlp and lenet5), as an onnx.ModelProto
    for inputs of shape (batch, *input_shape): QONNX tools (FINN among them) take fixed shapes,
    batch 1 by default.

    An n-bit layer's weight W = s q / (2^n - 1), |q| <= 2^n - 1, enters its Gemm or Conv through
    Quant(W, scale s / (2^n - 1), zero point 0, bit width n + 1, signed, narrow range): the n + 1-bit
    signed integers without -2^n are exactly the range of q, so the graph computes W. A layer BSQ
    emptied (0 bits) is a weight of zeros; a layer left in float is a plain Gemm or Conv.
    """
    from onnx import TensorProto, helper, numpy_helper

    if not isinstance(model, nn.Sequential):
        raise ValueError(f"QONNX export takes the kit's sequential models ({', '.join(MODELS)}), "
                         f"not a {type(model).__name__}")
    nodes, initializers = [], []

    def const(name: str, value) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    x = "input"
    for name, m in model.named_children():
        out = f"{name}.out"
        if isinstance(m, nn.Flatten):
            nodes.append(helper.make_node("Flatten", [x], [out], axis=1))
        elif isinstance(m, nn.ReLU):
            nodes.append(helper.make_node("Relu", [x], [out]))
        elif isinstance(m, (QuantReLU6, PACT)):
            nodes.extend(_activation(name, m, x, out, const))
        elif isinstance(m, nn.MaxPool2d):
            k, s, p = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding))
            nodes.append(helper.make_node("MaxPool", [x], [out], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4))
        elif isinstance(m, (BitLayer, nn.Linear, nn.Conv2d)):
            inputs = [x, _weight(name, m, nodes, const)]
            if m.bias is not None:
                inputs.append(const(f"{name}.bias", m.bias.detach().cpu()))
            if isinstance(m, nn.Linear) or getattr(m, "kind", "") == "linear":
                nodes.append(helper.make_node("Gemm", inputs, [out], transB=1))
            else:
                args = m.op_args if isinstance(m, BitLayer) else dict(
                    stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups)
                if isinstance(args["padding"], str):
                    raise ValueError(f"layer {name}: padding={args['padding']!r} is not exported; use numbers")
                nodes.append(helper.make_node("Conv", inputs, [out], strides=list(args["stride"]),
                                              pads=list(args["padding"]) * 2, dilations=list(args["dilation"]),
                                              group=args["groups"]))
        else:
            raise ValueError(f"QONNX export does not know {type(m).__name__} (layer {name}); it takes Flatten, ReLU, "
                             "the kit's activation quantizers, MaxPool2d, Linear and Conv2d")
        x = out
    training = model.training
    with torch.no_grad():  # in eval mode: a training-mode pass would move the running maxes
        classes = model.eval()(torch.zeros(1, *input_shape)).shape[1]
    model.train(training)
    graph = helper.make_graph(
        nodes, "bsq_explore", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, *input_shape])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, classes])], initializers)
    proto = helper.make_model(graph, producer_name="bsq_explore",
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(QONNX_DOMAIN, 1)])
    return _with_shapes(proto)


def _with_shapes(proto):
    """proto with every tensor's shape filled in by QONNX (onnx's own inference does not know Quant)."""
    try:
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.transformation.infer_shapes import InferShapes
    except ImportError:
        raise ValueError("QONNX export needs qonnx: pip install 'bsq_explore[qonnx]'") from None
    return ModelWrapper(proto).transform(InferShapes()).model


def _activation(name: str, m: nn.Module, x: str, out: str, const) -> list:
    """Clip to [0, top], then an unsigned k-bit Quant with scale top / (2^k - 1): the quantizer's
    grid at a fixed top, PACT's learned alpha or QuantReLU6's running max (the engine itself scales
    by each batch's max, which a deployed graph cannot)."""
    from onnx import helper

    if isinstance(m, PACT):
        top, clip = float(m.alpha.detach()), float(m.alpha.detach())
    else:
        top, clip = float(m.running_max), 6.0
        if top != top:  # nan
            raise ValueError(f"layer {name} has no running max (the run predates it): its activation scale is "
                             "unknown; retrain it to export")
    return [helper.make_node("Clip", [x, const(f"{name}.min", 0.0), const(f"{name}.max", clip)], [f"{name}.clipped"]),
            helper.make_node("Quant", [f"{name}.clipped", const(f"{name}.scale", top / (2 ** m.bits - 1)),
                                       const(f"{name}.zeropt", 0.0), const(f"{name}.bits", m.bits)], [out],
                             domain=QONNX_DOMAIN, signed=0, narrow=0, rounding_mode="ROUND")]


def _weight(name: str, m: nn.Module, nodes: list, const) -> str:
    """The name of layer m's weight in the graph: a Quant node's output for a converted layer."""
    from onnx import helper

    if not isinstance(m, BitLayer):
        return const(f"{name}.weight", m.weight.detach().cpu())
    nbits, q = m.weight.live_bits(), m.weight.integers().detach().cpu().double()
    if nbits == 0:
        return const(f"{name}.weight", torch.zeros(q.shape))
    step = float(m.weight.scale.detach()) / (2 ** nbits - 1)
    inputs = [const(f"{name}.weight_float", q * step), const(f"{name}.weight_scale", step),
              const(f"{name}.weight_zeropt", 0.0), const(f"{name}.weight_bits", nbits + 1)]
    nodes.append(helper.make_node("Quant", inputs, [f"{name}.weight"], domain=QONNX_DOMAIN, signed=1, narrow=1,
                                  rounding_mode="ROUND"))
    return f"{name}.weight"


def quant_bits(graph) -> dict[str, int]:
    """{layer: bits} read back from a QONNX graph: each weight Quant node's bit width minus its sign bit."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return {node.output[0].removesuffix(".weight"): int(values[node.input[3]]) - 1
            for node in graph.node if node.op_type == "Quant" and node.output[0].endswith(".weight")}
