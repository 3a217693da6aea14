"""Tensors a visitor uploads to the Playground: .npy, .pt or .csv, read without running anything, size checked first."""
from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["MAX_UPLOAD", "read_tensor"]

MAX_UPLOAD = 1_000_000  # elements of an uploaded tensor: plenty for a picture of bit planes


def read_tensor(name: str, raw: bytes, max_elements: int = MAX_UPLOAD) -> torch.Tensor:
    """A float tensor from an untrusted file's bytes (.npy, .pt or .csv, by name), or ValueError
    with one line that says what is wrong. Nothing in the file runs (no pickles), and its size is
    checked before it is read whole."""
    readers = {".npy": _read_npy, ".pt": _read_pt, ".csv": _read_csv}
    suffix = Path(name).suffix.lower()
    if suffix not in readers:
        raise ValueError(f"{name}: upload a .npy, .pt or .csv file")
    tensor = readers[suffix](name, raw, max_elements).double()
    if tensor.numel() == 0:
        raise ValueError(f"{name} holds no numbers")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} holds NaN or infinite values: every weight must be a finite number")
    return tensor.float()


def _read_npy(name: str, raw: bytes, max_elements: int) -> torch.Tensor:
    try:
        stream = io.BytesIO(raw)
        major, _ = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(stream)
    except Exception:  # numpy raises several types for a file that is not .npy
        raise ValueError(f"{name} is not a .npy array file") from None
    _check_upload(name, dtype.kind, math.prod(shape), max_elements)
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception:
        raise ValueError(f"{name} holds a truncated or unreadable array") from None
    return torch.from_numpy(np.ascontiguousarray(array))


def _read_pt(name: str, raw: bytes, max_elements: int) -> torch.Tensor:
    if len(raw) > 16 * max_elements + 65536:  # 8-byte elements and the archive around them
        raise ValueError(f"{name} is {len(raw) / 1e6:.0f} MB: upload at most {max_elements:,} elements")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles it then refuses
            warnings.simplefilter("ignore")
            tensor = torch.load(io.BytesIO(raw), weights_only=True)
    except Exception:  # a pickle of anything but tensors is refused, and never run
        raise ValueError(f"{name} is not a tensor file that can be loaded safely "
                         "(only tensors saved with torch.save are read)") from None
    if not isinstance(tensor, torch.Tensor):
        what = f"a {type(tensor).__name__}" + (f" of {len(tensor)} entries (a state_dict?)" if
                                               isinstance(tensor, dict) else "")
        raise ValueError(f"{name} holds {what}, not one tensor: save the one tensor to look at")
    kind = "c" if tensor.is_complex() else "b" if tensor.dtype == torch.bool else \
        "f" if tensor.is_floating_point() else "i"
    _check_upload(name, kind, tensor.numel(), max_elements)
    return tensor


def _read_csv(name: str, raw: bytes, max_elements: int) -> torch.Tensor:
    if len(raw) > 32 * max_elements:
        raise ValueError(f"{name} is {len(raw) / 1e6:.0f} MB: upload at most {max_elements:,} numbers")
    try:
        with warnings.catch_warnings():  # an empty file is reported below, as no numbers
            warnings.simplefilter("ignore")
            tensor = torch.from_numpy(np.loadtxt(io.StringIO(raw.decode()), delimiter=",", ndmin=2))
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{name} is not a table of comma-separated numbers") from None
    _check_upload(name, "f", tensor.numel(), max_elements)
    return tensor


def _check_upload(name: str, kind: str, count: int, max_elements: int) -> None:
    """numpy's dtype kind (b, i, u, f, c, O, ...) and the element count of an upload, checked."""
    if kind == "c":
        raise ValueError(f"{name} holds complex numbers: weights are real")
    if kind not in "biuf":
        raise ValueError(f"{name} holds {'Python objects' if kind == 'O' else 'non-numeric values'}, not numbers")
    if count > max_elements:
        raise ValueError(f"{name} holds {count:,} numbers: upload at most {max_elements:,}")
