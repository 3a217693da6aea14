"""TensorBoard, a training callback: each epoch's metrics, each layer's bits and the bit heatmap as an image."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .plots import REMOVED, bit_grid

__all__ = ["CELL", "TensorBoard", "heatmap_image"]

CELL = 16  # pixels a side per (layer, bit) cell of the heatmap image
_METRICS = ("train_loss", "reg_loss", "train_acc", "test_acc", "avg_bits", "compression", "lr")


class TensorBoard:
    """A callback for train(), resume() and `--tensorboard DIR`: writes, at each epoch's step,
    the scalars metrics/<name> and bits/<layer>, and the image 'bit planes' (layers top to bottom,
    bits most significant left, Viridis density, grey where a plane was removed), so a run can be
    watched in TensorBoard beside other experiments. Needs the tensorboard package."""

    def __init__(self, logdir: str | os.PathLike):
        try:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.summary.writer.record_writer import RecordWriter
        except ImportError:
            raise ValueError("--tensorboard needs TensorBoard: pip install 'bsq_explore[tensorboard]'") from None
        self._event = Event
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}.0"
        # written here, unbuffered, in the training thread: a full disk fails the run where it happens,
        # not in a writer thread that prints a traceback and fails again when closed
        self._file = open(Path(logdir) / name, "wb", buffering=0)
        self._records = RecordWriter(self._file)
        self._write(file_version="brain.Event:2")

    def _write(self, **fields) -> None:
        self._records.write(self._event(wall_time=time.time(), **fields).SerializeToString())

    def __call__(self, event) -> None:
        from torch.utils.tensorboard.summary import image, scalar

        for key in _METRICS:
            value = event.metrics.get(key)
            if value is not None and np.isfinite(value):  # a snapshot epoch trains nothing: no loss
                self._write(step=event.step, summary=scalar(f"metrics/{key}", value))
        if event.layers is not None:
            for layer, bits in zip(event.layers.layer, event.layers.nbits):
                self._write(step=event.step, summary=scalar(f"bits/{layer}", bits))
        if event.bits is not None and len(event.bits):
            self._write(step=event.step, summary=image("bit planes", heatmap_image(event.bits), dataformats="HWC"))

    def close(self) -> None:
        self._file.close()


def heatmap_image(bits: pd.DataFrame) -> np.ndarray:
    """One epoch's bit frame as an (H, W, 3) uint8 picture: a CELL-pixel square per (layer, bit)."""
    from plotly.colors import sample_colorscale, unlabel_rgb

    grid = bit_grid(bits)[3][-1]  # rows and columns as plots.bit_heatmap draws them
    grey = [int(REMOVED[i:i + 2], 16) for i in (1, 3, 5)]
    live = ~np.isnan(grid)
    colours = sample_colorscale("Viridis", np.clip(grid[live], 0, 1).tolist())
    image = np.empty(grid.shape + (3,), dtype=np.uint8)
    image[:] = grey
    image[live] = [[round(c) for c in unlabel_rgb(colour)] for colour in colours]
    return image.repeat(CELL, axis=0).repeat(CELL, axis=1)
