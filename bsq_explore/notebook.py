"""The tutorial notebooks' own pieces: BSQ_QUICK, and the live widgets a training run redraws."""
from __future__ import annotations

import os
from typing import Callable

from . import plots

__all__ = ["quick", "live_heatmap", "live_curves"]


def quick() -> bool:
    """True when BSQ_QUICK is set to anything but '', '0', 'false' or 'no': the notebooks then train
    for a handful of epochs (CI runs them this way)."""
    return os.environ.get("BSQ_QUICK", "").strip().lower() not in ("", "0", "false", "no")


def live_heatmap(value: str = "density") -> tuple[object, Callable]:
    """A plotly FigureWidget and a training callback (train.train(callbacks=[...])) that redraws it
    from each Event's bit frame: layers x bits, as plots.bit_heatmap draws that epoch.
    Float (pretraining) epochs only update the title: there are no bit planes yet."""
    import plotly.graph_objects as go

    widget = go.FigureWidget(go.Heatmap(z=[], colorscale="Viridis", zmin=0, zmax=1))
    widget.update_layout(title="bit planes: waiting for the first epoch", height=300, plot_bgcolor=plots.REMOVED,
                         margin=dict(l=10, r=10, t=50, b=10))

    def update(event) -> None:
        if event.bits is None or event.bits.empty:
            why = "float, no planes yet" if event.bits is None else "no plane left"
            widget.layout.title.text = f"bit planes: {event.stage} {event.epoch} ({why})"
            return
        fig = plots.bit_heatmap(event.bits, value=value)
        layout = fig.layout.to_plotly_json()
        layout.pop("template", None)  # the widget has the same default one; re-validating it costs 0.3 s
        with widget.batch_update():
            widget.data[0].update(fig.data[0].to_plotly_json())
            widget.update_layout(layout, title_text=f"bit planes, {event.stage} {event.epoch}")
    return widget, update


def live_curves() -> tuple[object, Callable]:
    """A FigureWidget of test accuracy and average bits (right axis) against epochs, and the training
    callback that appends each Event's point."""
    import plotly.graph_objects as go

    widget = go.FigureWidget([go.Scatter(x=[], y=[], name="test acc", mode="lines+markers"),
                              go.Scatter(x=[], y=[], name="avg bits", yaxis="y2", line_shape="hv")])
    widget.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10), title="test accuracy and average bits",
                         xaxis_title="epoch (since the run began)", yaxis=dict(title="test acc", range=[0, 1.02]),
                         yaxis2=dict(title="avg bits", overlaying="y", side="right", range=[0, 33]))

    def update(event) -> None:
        acc, bits = widget.data
        with widget.batch_update():
            acc.x, acc.y = (*acc.x, event.step), (*acc.y, event.metrics["test_acc"])
            bits.x, bits.y = (*bits.x, event.step), (*bits.y, event.metrics["avg_bits"])
    return widget, update

