"""The trained model out of the kit: its integer export (model.pt) and loading it back into a model."""
from __future__ import annotations

import torch
from torch import nn

from .layers import BitLayer, QuantWeight, bit_layers, replace_module
from .models import build_model

__all__ = ["export", "load_quantized", "load_layers_", "load_model", "EXPORT_FORMAT"]

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


def load_model(run, data=None) -> nn.Module:
    """The final quantized model of a finished run (a runs.Run): its model.pt loaded into its
    architecture, built for data (a data.Dataset; default: the image shape and classes its run.json
    records, so that no image is read, else its dataset, loaded)."""
    from .data import load_for_model

    data = data or load_for_model(run.config, run.info.get("data"))
    model = build_model(run.config, data)
    load_quantized(model, run.read_model())
    return model
