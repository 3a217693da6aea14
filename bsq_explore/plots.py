"""Plotly figures shared by the notebooks and the app, made for a projector (plotly loads lazily).

Every figure is made for a projector: 16 px dark text on white, a title, axis titles with units,
accuracy in %, and colour-blind-safe scales (Viridis for ordered values, Okabe-Ito for runs).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from .axes import aligned_steps, epoch_labels
from .catalog import caption

__all__ = ["REMOVED", "STAGE_COLORS", "MAX_FRAMES", "FONT", "RUN_COLORS", "POS", "NEG", "MAX_CELL_TEXT", "FRAMES_SECONDS",
           "HEATMAP_ROWS_PX",
           "EPOCH_TITLE", "alpha_colors", "bit_grid", "bit_heatmap", "bit_heatmap_animation", "precision_timeline",
           "metrics_curves", "PARETO_BAND", "pareto", "layer_precision_bars", "compare_metrics", "bit_planes_image",
           "error_curves", "share_bit_columns_", "twin_bits", "run_heatmap"]

REMOVED = "#d9d9d9"      # the plot background shows through where a plane no longer exists
STAGE_COLORS = {"pretrain": "rgba(120,120,120,0.10)", "bsq": "rgba(0,114,178,0.08)", "finetune": "rgba(0,158,115,0.10)"}
MAX_FRAMES = 200         # longer runs animate every k-th epoch (the slider still reaches every one)
FONT = dict(family="Arial, Helvetica, sans-serif", size=16, color="#1a1a1a")  # readable from the back row
RUN_COLORS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442"]  # Okabe-Ito
POS, NEG = "#0072B2", "#D55E00"  # a digit in the pos planes, in the neg planes
MAX_CELL_TEXT = 200      # heatmaps with at most this many cells print their values
FRAMES_SECONDS = 15      # an animated bit heatmap plays a whole run in about this long
HEATMAP_ROWS_PX = 340    # a bit heatmap's rows share this height (40 px a row at most, 16 at least): a
                         # ResNet-20's 20 layers fit a 1024x768 screen with the page's controls
EPOCH_TITLE = "epoch (stage and epoch within it)"


def _go():
    import plotly.graph_objects as go

    return go


def _style(fig, title: str, height: int, **layout):
    """The look every figure shares: projector-sized dark text on white, a title, room for it."""
    fig.update_layout(template="plotly_white", font=FONT, title=dict(text=title, font_size=20), height=height,
                      margin=dict(l=10, r=10, t=80, b=10), hoverlabel=dict(font_size=16), **layout)
    return fig


def alpha_colors(alphas) -> dict[float, str]:
    """One colour per alpha, ordered (Viridis, dark for the smallest), so that every chart of a
    sweep gives an alpha the same colour. The light yellow end is left out: it vanishes on white."""
    from plotly.colors import sample_colorscale

    order = sorted({float(a) for a in alphas})
    spots = [0.85 * i / (len(order) - 1) for i in range(len(order))] if len(order) > 1 else [0.4]
    return dict(zip(order, sample_colorscale("Viridis", spots)))


def _epoch_ticks(steps: pd.DataFrame, most: int = 12) -> dict:
    """An x axis over steps, ticks labelled 'bsq 10' (stage and epoch within it) at every stage's
    start and evenly between, at most `most` of them. steps: rows with step, stage and epoch."""
    steps = steps.drop_duplicates("step").sort_values("step").reset_index(drop=True)
    every = max(1, math.ceil(len(steps) / most))
    starts = steps.drop_duplicates("stage").index
    # an even tick too close to a stage's start would print over its label
    keep = [i in starts or (i % every == 0 and min(abs(i - starts)) >= every / 2) for i in steps.index]
    shown = steps[keep]
    return dict(tickmode="array", tickvals=shown.step.tolist(), ticktext=epoch_labels(shown).tolist(),
                title=EPOCH_TITLE)


def bit_grid(bits: pd.DataFrame, value: str = "density") -> tuple[list[str], list[int], list[int], np.ndarray]:
    """A bit heatmap's data: its layers (network order), bits (most significant first), steps, and
    the (step x layer x bit) values of column value, NaN where a plane does not exist. One pass over
    the frame (a pivot per epoch made the animation of a 60-epoch run take 0.5 s)."""
    layers = bits.drop_duplicates("layer").sort_values("layer_index").layer.tolist()
    columns = list(range(int(bits.bit.max()), int(bits.bit.min()) - 1, -1))
    steps = sorted(bits.step.unique().tolist())
    cube = np.full((len(steps), len(layers), len(columns)), np.nan)
    at = lambda keys, column: pd.Index(keys).get_indexer(bits[column])  # noqa: E731
    cube[at(steps, "step"), at(layers, "layer"), at(columns, "bit")] = bits[value].to_numpy(float)
    return layers, columns, steps, cube


def _cells(grid: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in grid]


def _heatmap_trace(bits: pd.DataFrame, value: str):
    """(trace(step), frame_data(step), steps frame, {step: label}) of bit_heatmap: one grid shape and
    colour scale for every epoch; frame_data is the little an animation frame changes (the values).
    value 'norm' shows each plane's group norm over its layer's largest in the run: layers differ in
    size by orders of magnitude, and raw norms would make a small layer look dead."""
    go = _go()
    if value not in ("density", "norm"):
        raise ValueError(f"value must be 'density' or 'norm', not {value!r}")
    if bits.empty:
        raise ValueError("no bit frames yet: the run has not reached BSQ training")
    if value == "norm":
        top = bits.groupby("layer").norm.transform("max")
        bits = bits.assign(norm=(bits.norm / top.where(top > 0)).fillna(0.0))
    layers, columns, _, cube = bit_grid(bits, value)
    steps = bits.drop_duplicates("step").sort_values("step")
    index = {s: i for i, s in enumerate(steps.step)}
    what = "density" if value == "density" else "norm / layer's largest"
    hover = "layer %{y}<br>bit %{x}<br>" + what + " %{z:.3f}<extra></extra>"
    text = len(layers) * len(columns) <= MAX_CELL_TEXT and _row_px(len(layers)) >= 24  # digits need room

    def trace(s):
        return go.Heatmap(z=_cells(cube[index[s]]), x=[str(c) for c in columns], y=layers,
                          zmin=0, zmax=1, colorscale="Viridis", hovertemplate=hover, hoverongaps=False,
                          texttemplate="%{z:.2f}" if text else None, textfont=dict(size=14),
                          colorbar=dict(title=dict(text="density" if value == "density" else "norm /<br>layer max")))

    def frame_data(s):
        return dict(type="heatmap", z=_cells(cube[index[s]]))
    return trace, frame_data, steps, dict(zip(steps.step, epoch_labels(steps)))


def bit_heatmap(bits: pd.DataFrame, step: int | None = None, value: str = "density"):
    """Layers (network order, top to bottom) x bits (most significant on the left) at one epoch
    (step, default the last).

    Colour is the plane's density, the share of weights with that bit set, on a fixed 0..1 scale
    (or value='norm': its group norm, the quantity the Lasso shrinks, over its layer's largest);
    removed planes show the grey background, so a live plane that is merely sparse (dark) never
    looks like a dead one. Values are printed in the cells when they fit.
    """
    trace, _, steps, labels = _heatmap_trace(bits, value)
    return _still_heatmap(trace, steps, labels, step)[0]


def _still_heatmap(trace, steps: pd.DataFrame, labels: dict, step: int | None):
    """(figure, step) of bit_heatmap from _heatmap_trace's parts, at step (default the last)."""
    step = int(steps.step.iloc[-1]) if step is None else int(step)
    if step not in labels:
        raise ValueError(f"no bit frame at step {step}; steps run from {steps.step.min()} to {steps.step.max()}")
    fig = _go().Figure(trace(step))
    rows = len(fig.data[0].y)
    fig = _style(fig, f"bit planes, {labels[step]}", max(300, _row_px(rows) * rows + 125),
                 xaxis=dict(title="bit (most significant left)", type="category"),
                 yaxis=dict(title="layer", autorange="reversed", type="category", tickmode="array",
                            tickvals=fig.data[0].y, ticklabelstandoff=6),  # every layer named, clear of the cells
                 plot_bgcolor=REMOVED)
    return fig.update_layout(margin_t=55), step


def _row_px(rows: int) -> int:
    return max(16, min(40, HEATMAP_ROWS_PX // max(rows, 1)))


def bit_heatmap_animation(bits: pd.DataFrame, step: int | None = None, value: str = "density"):
    """bit_heatmap with every epoch as an animation frame (at most MAX_FRAMES, the last always),
    a play button and a slider above the chart, so that they stay on screen with its first rows; it
    opens, and plays on from, step (default the last)."""
    go = _go()
    trace, frame_data, steps, labels = _heatmap_trace(bits, value)
    fig, step = _still_heatmap(trace, steps, labels, step)
    shown = steps.step.tolist()[:: max(1, math.ceil(len(steps) / MAX_FRAMES))]
    if shown[-1] != steps.step.iloc[-1]:
        shown.append(int(steps.step.iloc[-1]))
    if step not in shown:
        shown = sorted({*shown, step})
    fig.frames = [go.Frame(data=[frame_data(s)], traces=[0], name=str(s),
                           layout=dict(title_text=f"bit planes, {labels[s]}"))
                  for s in shown]
    # a whole run plays in about FRAMES_SECONDS, slow enough to talk over, each frame shown 0.15 to 0.8 s
    play = dict(frame=dict(duration=min(800, max(150, 1000 * FRAMES_SECONDS // len(shown))), redraw=True),
                fromcurrent=True, transition=dict(duration=0))
    top = 50  # px above the plot for the play button and the slider: on screen with the chart's rows
    height = fig.layout.height + top
    above = 1 + 8 / (height - fig.layout.margin.t - top - fig.layout.margin.b)  # paper units, over the plot
    fig.update_layout(
        height=height, margin=dict(t=fig.layout.margin.t + top),
        updatemenus=[dict(type="buttons", showactive=False, x=0, y=above, xanchor="left", yanchor="bottom",
                          direction="left", pad=dict(t=0, r=10),
                          buttons=[dict(label="▶ play", method="animate", args=[None, play]),
                                   dict(label="❚❚ pause", method="animate",
                                        args=[[None], dict(mode="immediate", frame=dict(duration=0, redraw=False))])])],
        sliders=[dict(active=shown.index(step), x=0.4, len=0.6, y=above, yanchor="bottom", pad=dict(t=0, b=0),
                      currentvalue=dict(visible=False), ticklen=0, font=dict(size=1, color="white"),
                      steps=[dict(label=labels[s], method="animate",  # unlabelled ticks: the title names the epoch
                                  args=[[str(s)], dict(mode="immediate", frame=dict(duration=0, redraw=True))])
                             for s in shown])])
    return fig


def _stage_bands(fig, frame: pd.DataFrame) -> None:
    """Shade each stage in every panel; name it once, above the first panel."""
    for stage, rows in frame.groupby("stage", sort=False):
        lo, hi = rows.step.min(), rows.step.max()
        fig.add_vrect(x0=lo - 0.5, x1=hi + 0.5, fillcolor=STAGE_COLORS.get(stage, "rgba(0,0,0,0.05)"),
                      line_width=0, layer="below")
        fig.add_annotation(x=lo - 0.5, y=1.0, xref="x", yref="y domain", text=stage, showarrow=False,
                           xanchor="left", yanchor="bottom")


def _change_labels(table: pd.DataFrame) -> list[list[str]]:
    """Each row's value printed where it changes (and at its first column), blank elsewhere: a
    number in every cell of a 60-epoch row would not fit, and the changes are the story."""
    labels = []
    for row in table.to_numpy():
        labels.append(["" if math.isnan(v) or (j and v == row[j - 1]) else f"{v:g}" for j, v in enumerate(row)])
    return labels


def precision_timeline(layers: pd.DataFrame, requant_steps: list[int] | None = None):
    """Layer x epoch heatmap of each layer's bits, stage changes as solid and re-quantizations
    (requant_steps, default: every step where some layer's bits changed) as dotted lines.
    A layer at 0 bits (empty) shows the grey background, like a removed plane."""
    go = _go()
    if layers.empty:
        raise ValueError("no layer frames yet: the run has not reached BSQ training")
    order = layers.drop_duplicates("layer").sort_values("layer_index").layer.tolist()
    table = layers.pivot_table(index="layer", columns="step", values="nbits", aggfunc="last").reindex(order)
    shown = table.where(table > 0)
    fig = go.Figure(go.Heatmap(z=[[None if math.isnan(v) else v for v in row] for row in shown.to_numpy()],
                               text=_change_labels(table), texttemplate="%{text}", textfont=dict(size=14),
                               x=table.columns.tolist(), y=order, colorscale="Viridis", zmin=0,
                               zmax=max(8, int(layers.nbits.max())), colorbar=dict(title=dict(text="bits")),
                               hoverongaps=False, hovertemplate="layer %{y}<br>step %{x}<br>%{z} bits<extra></extra>"))
    if requant_steps is None:
        changed = table.diff(axis=1).ne(0).any(axis=0)
        requant_steps = [s for s, c in zip(table.columns[1:], changed.iloc[1:]) if c]
    for s in requant_steps:
        fig.add_vline(x=s - 0.5, line_dash="dot", line_color="black", line_width=1)
    starts = layers.drop_duplicates("step").sort_values("step").drop_duplicates("stage").step.tolist()[1:]
    for s in starts:
        fig.add_vline(x=s - 0.5, line_color="crimson", line_width=2)
    return _style(fig, "bits per layer (dotted: re-quantization, red: stage change)", max(320, 36 * len(order) + 180),
                  xaxis=_epoch_ticks(layers), yaxis=dict(title="layer", autorange="reversed", type="category"),
                  plot_bgcolor=REMOVED)


def metrics_curves(metrics: pd.DataFrame):
    """Accuracy (%), losses, average bits and compression against epochs, stages shaded."""
    from plotly.subplots import make_subplots

    go = _go()
    fig = make_subplots(rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("accuracy (%)", "loss (CE) and regularizer R", "average bits per weight",
                                        "compression (x, vs float32)"),
                        specs=[[{}], [{"secondary_y": True}], [{}], [{}]])
    x = metrics.step
    fig.add_trace(go.Scatter(x=x, y=100 * metrics.test_acc, name="test accuracy", mode="lines+markers",
                             line_color=RUN_COLORS[0]), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=100 * metrics.train_acc, name="train accuracy", mode="lines",
                             line_color=RUN_COLORS[1]), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=metrics.train_loss, name="train loss (CE)", line_color=RUN_COLORS[2]), 2, 1)
    fig.add_trace(go.Scatter(x=x, y=metrics.reg_loss, name="R (bit Lasso)", line=dict(dash="dot", color=RUN_COLORS[3])),
                  2, 1, secondary_y=True)
    fig.add_trace(go.Scatter(x=x, y=metrics.avg_bits, name="average bits", line_shape="hv",
                             line_color=RUN_COLORS[4]), 3, 1)
    fig.add_trace(go.Scatter(x=x, y=metrics.compression.where(metrics.compression.map(math.isfinite)),
                             name="compression", line_shape="hv", line_color=RUN_COLORS[5]), 4, 1)
    fig.update_yaxes(range=_percent_range([*metrics.test_acc, *metrics.train_acc]), title_text="%", row=1, col=1)
    fig.update_yaxes(title_text="CE", rangemode="tozero", row=2, col=1)  # losses are never negative: no "-50" tick
    fig.update_yaxes(title_text="R", rangemode="tozero", row=2, col=1, secondary_y=True)
    fig.update_yaxes(title_text="bits", row=3, col=1)
    fig.update_yaxes(title_text="x", row=4, col=1)
    _stage_bands(fig, metrics)
    fig.update_xaxes(**{k: v for k, v in _epoch_ticks(metrics).items() if k != "title"})
    return _style(fig, "training curves", 900, xaxis4_title=EPOCH_TITLE)


def _percent_range(accuracies) -> list[float]:
    """A y range in % from just below the lowest accuracy to 100: differences of a point stay visible."""
    shown = [100 * a for a in accuracies if a is not None and math.isfinite(a)]
    return [max(0.0, math.floor(min(shown)) - 2), 100.5] if shown else [0, 100.5]


def _power_ticks(values) -> dict:
    """Log-axis ticks at powers of two spanning values, labelled '4x': no minor '2 3 4 5' labels."""
    values = [v for v in values if v and math.isfinite(v)]
    lo, hi = (math.floor(math.log2(min(values))), math.ceil(math.log2(max(values)))) if values else (0, 5)
    ticks = [2.0 ** k for k in range(lo, hi + 1)]
    return dict(type="log", tickmode="array", tickvals=ticks, ticktext=[f"{t:g}x" for t in ticks])


PARETO_BAND = 15  # points below the float model: the accuracies where a choice between methods is made


def pareto(table: pd.DataFrame):
    """Compression (x, log) against final test accuracy (y, %) over a sweep table (runs.sweep_table):
    one marker per BSQ run, coloured by alpha (alpha_colors) and joined in order of compression;
    their Hessian twins as diamonds of the same colours, joined by a dashed line; uniform baselines
    as squares, named above the frame on a dotted line; the float model as a dashed line. The frame
    holds the region where a choice is made: accuracies down to PARETO_BAND points below the float
    model (or the best run). A run below it (a collapsed run, a 1-bit baseline) is a triangle in a
    grey strip under the frame, without a line to it and without a y tick beside it, and is listed in
    the strip with its true accuracy and compression; a run right of the frame is in the strip too, a
    corner triangle in a grey band past the frame's right edge, in order of compression."""
    go = _go()
    fig = go.Figure()
    done = table[(table.status == "finished") & table.compression.map(lambda c: c is not None and math.isfinite(c))]
    bsq, hessian = (done[done.kind == k].sort_values("compression") for k in ("bsq", "hessian"))
    uniform = done[done.kind == "uniform"].sort_values("nbits", ascending=False)  # the legend shows the first: a square
    floats = done[done.kind == "float"]
    colors = alpha_colors(table[table.kind == "bsq"].alpha.dropna())
    runs = pd.concat([bsq, hessian, uniform])
    top = 100 * (floats.test_acc.iloc[0] if len(floats) else runs.test_acc.max() if len(runs) else 1.0)
    emptied = table[(table.status == "finished") & table.compression.map(lambda c: c is not None and not math.isfinite(c))]
    frame, inside, below = _frame(runs, emptied, top)
    for rows, name, dash in ((bsq, "BSQ, in order", None), (hessian, "Hessian, in order", "dash")):
        if len(rows):  # a gap at a run in the strip: a line to it would draw a false slope
            x, y = frame.place(rows)
            fig.add_trace(go.Scatter(x=x, y=[None if frame.stripped(n, a) else yi
                                             for n, a, yi in zip(rows.name, rows.test_acc, y)],
                                     mode="lines", name=name, line=dict(color="#777777", width=2, dash=dash),
                                     hoverinfo="skip"))
    for row, xi, yi in zip(bsq.itertuples(), *frame.place(bsq)):
        fig.add_trace(go.Scatter(x=[xi], y=[yi], mode="markers", name=f"α={row.alpha:g}", customdata=[row.name],
                                 marker=dict(color=colors[row.alpha], size=16, line=dict(color="white", width=1),
                                             symbol=frame.symbol(row.name, row.test_acc, "circle")),
                                 **frame.hover([row])))
    _points_(fig, frame, hessian, "Hessian-chosen bits", "diamond", [colors.get(a, "#777777") for a in hessian.alpha])
    _points_(fig, frame, uniform, "uniform k-bit", "square", "#E69F00")
    named = uniform[~uniform.name.isin(frame.beyond)]  # one right of the frame has no x to be named at
    _name_baselines_(fig, named.nbits, named.compression)
    _below_note_(fig, frame, below)
    if len(floats):
        fig.add_hline(y=top, line_dash="dash", annotation_text="float model", annotation_position="bottom right",
                      annotation_font_size=16)
    x_range = [math.log10(min(inside.compression) / 1.3), math.log10(frame.end)] if frame.right else None
    return _style(fig, "test accuracy against compression", 600,
                  legend=dict(orientation="h", yanchor="top", y=-0.22, x=0),
                  xaxis=dict(title="compression (x, vs float32 weights)", range=x_range,
                             **_power_ticks([*inside.compression, frame.right or 1])),
                  yaxis=dict(title="final test accuracy (%)", range=[frame.bottom, frame.top],
                             **_accuracy_ticks(frame.lo, frame.top)))


def _frame(runs: pd.DataFrame, emptied: pd.DataFrame, top: float) -> tuple["_Frame", pd.DataFrame, pd.DataFrame]:
    """The pareto chart's frame around the runs within PARETO_BAND points of top (%), those runs, and
    the runs of its strip: below it, right of it, or with no weight left (emptied: no x)."""
    inside = runs[100 * runs.test_acc >= top - PARETO_BAND]
    lo = min([*(100 * inside.test_acc), top]) - 1.5
    right = 1.3 * inside.compression.max() if len(inside) else None
    beyond = runs[runs.compression > right].sort_values("compression") if right else runs.iloc[:0]
    below = pd.concat([runs[(100 * runs.test_acc < lo) & ~runs.name.isin(beyond.name)], beyond, emptied])
    return (_Frame(lo, right, min(100.0, top + 2), math.ceil(len(below) / _NOTE_ENTRIES), tuple(beyond.name)),
            inside, below)


def _accuracy_ticks(lo: float, hi: float) -> dict:
    """Whole-number y ticks from lo to hi, at most 8: none in the strip below the frame."""
    step = next((s for s in (1, 2) if (hi - lo) / s <= 8), 5)  # the frame spans at most PARETO_BAND + 3.5 points
    return dict(tickmode="array", tickvals=list(range(math.ceil(lo / step) * step, math.floor(hi) + 1, step)))


def _name_baselines_(fig, bits, xs) -> None:
    """Each uniform baseline named above the frame, on a dotted line: clear of the points."""
    for b, x in zip(bits, xs):
        fig.add_vline(x=x, line_dash="dot", line_color="#999999", line_width=1)
        fig.add_annotation(x=math.log10(x), y=1, yref="paper", yanchor="bottom", showarrow=False, text=f"{b:g}-bit",
                           font_size=16)


_NOTE_ENTRIES = 2  # runs per line of the strip's list: two fit 700 px at 16 px
_BEYOND = 1.3  # the runs right of the frame share the x range from its right edge to this times it


class _Frame(NamedTuple):
    """The pareto chart's frame: its lowest accuracy (%), its right edge (compression), its top (%),
    and under it a strip for the runs below it: a row of triangles over `lines` lines of their list;
    `beyond`, the runs right of the frame, in order of compression (in the strip, whatever their accuracy)."""
    lo: float
    right: float | None
    top: float
    lines: int
    beyond: tuple[str, ...] = ()

    @property
    def row(self) -> float:  # one row of the strip, in points: about a fifteenth of the frame's height
        return max(0.5, (self.top - self.lo) / 15)

    @property
    def end(self) -> float:
        """The x axis's end: room past the right edge for the runs right of the frame, if any."""
        return self.right * (1.03 * _BEYOND if self.beyond else 1.15)

    @property
    def bottom(self) -> float:
        return self.lo - self.row * (1 + max(1, self.lines))

    def place(self, rows) -> tuple[list, list]:
        """(x, y) drawn: a run below the frame in the strip's top row, the runs right of it spread in
        order past its right edge (at their own x they would stretch the axis to thousands)."""
        slots = len(self.beyond) + 1
        return ([self.right * _BEYOND ** ((self.beyond.index(n) + 1) / slots) if n in self.beyond else c
                 for n, c in zip(rows.name, rows.compression)],
                [self.lo - self.row / 2 if self.stripped(n, a) else 100 * a for n, a in zip(rows.name, rows.test_acc)])

    def stripped(self, name: str, accuracy: float) -> bool:
        """Whether a run is drawn in the strip, not at its accuracy."""
        return name in self.beyond or 100 * accuracy < self.lo

    def symbol(self, name: str, accuracy: float, inside: str) -> str:
        return "triangle-se" if name in self.beyond else "triangle-down" if self.stripped(name, accuracy) else inside

    @staticmethod
    def hover(rows) -> dict:  # text, not meta: a trace's meta is one value, its text one per point
        return dict(text=[f"{r.compression:.1f}x, {100 * r.test_acc:.1f} %" for r in rows],
                    hovertemplate="%{customdata}<br>%{text}<extra></extra>")


def _points_(fig, frame: _Frame, rows: pd.DataFrame, name: str, symbol: str, color) -> None:
    """One trace of markers for rows (a kind of run), drawn where frame places them."""
    if rows.empty:
        return
    x, y = frame.place(rows)
    fig.add_trace(_go().Scatter(x=x, y=y, mode="markers", name=name, customdata=rows.name,
                                marker=dict(symbol=[frame.symbol(n, a, symbol) for n, a in zip(rows.name, rows.test_acc)],
                                            size=14, color=color,
                                            line=dict(color="black", width=1)), **frame.hover(list(rows.itertuples()))))


def _below_note_(fig, frame: _Frame, below: pd.DataFrame) -> None:
    """The strip under the frame, grey, listing the runs drawn in its top row: labels beside each would pile up."""
    if below.empty:
        return
    names = [f"{b:g}-bit" if k == "uniform" else f"Hessian α={a:g}" if k == "hessian" else f"α={a:g}"
             for k, a, b in zip(below.kind, below.alpha, below.nbits)]
    sizes = [f"{c:.0f}x" if math.isfinite(c) else "no weight left" for c in below.compression]
    entries = [f"{'◢ ' if run in frame.beyond else ''}{n}: {100 * a:.1f} %, {c}"
               for run, n, a, c in zip(below.name, names, below.test_acc, sizes)]
    title = "▼ below the frame" + (", ◢ right of it" if frame.beyond else "")
    fig.add_hrect(y0=frame.bottom, y1=frame.lo, fillcolor="#e8e8e8", line_width=0, layer="below")
    if frame.beyond:  # the same grey past the right edge: no x there is a compression
        fig.add_vrect(x0=frame.right, x1=frame.end, fillcolor="#e8e8e8", line_width=0, layer="below")
    fig.add_annotation(x=0, xref="paper", y=frame.bottom, xanchor="left", yanchor="bottom", showarrow=False,
                       align="left", font_size=16, text=f"{title}: " + "<br>".join(
                           "; ".join(entries[i:i + _NOTE_ENTRIES]) for i in range(0, len(entries), _NOTE_ENTRIES)))


_NUMBERED_BARS = 40  # more bars than this on a 1024 px page are too narrow for their numbers: they would run together


def _layer_tick_angle(layers: list[str]) -> int | None:
    """Layer names under bars: plotly tilts them 30 degrees when they do not fit side by side, and at
    more than 12 names on a 1024 px page neighbours then touch (a ResNet-20's 20); 60 degrees parts them.
    None: plotly's own choice."""
    return -60 if len(layers) > 12 else None


def layer_precision_bars(layers: pd.DataFrame, colors: dict[float, str] | None = None):
    """Final bits of each layer, one bar group per layer and one colour per alpha (analysis.sweep_layers),
    the bits printed on the bars. colors: alpha_colors of the whole sweep, so that an alpha keeps the
    colour it has on the sweep's other charts (default: of the alphas shown)."""
    go = _go()
    fig = go.Figure()
    order = layers.drop_duplicates("layer").sort_values("layer_index").layer.tolist() if len(layers) else []
    colors = colors or alpha_colors(layers.alpha)
    runs = layers.get("run", layers.alpha.astype(str))  # two runs of one alpha (a copied folder) are two bars
    shared = runs.groupby(layers.alpha).nunique()
    numbered = len(order) * shared.sum() <= _NUMBERED_BARS
    for (alpha, run), rows in layers.groupby([layers.alpha, runs]):
        rows = rows.drop_duplicates("layer").set_index("layer").reindex(order)
        name = f"α={alpha:g}" + (f" ({run})" if shared[alpha] > 1 else "")
        fig.add_trace(go.Bar(x=order, y=rows.nbits, name=name, marker_color=colors[float(alpha)],
                             text=rows.nbits if numbered else None, textposition="outside", textfont_size=14))
    return _style(fig, "final precision per layer", 460, barmode="group", legend_title_text="alpha",
                  xaxis=dict(title="layer (network order)", type="category", tickangle=_layer_tick_angle(order)),
                  yaxis=dict(title="bits per weight", range=[0, layers.nbits.max() + 1 if len(layers) else 9]))


def twin_bits(bsq: pd.DataFrame, hessian: pd.DataFrame, traces: pd.DataFrame):
    """A BSQ run and its Hessian twin at the same size: each layer's final bits under both (final_layers
    frames), above each layer's sensitivity, its Hessian trace per weight (log scale, with the
    estimate's standard error): a large layer with a small trace per weight is where bits are cheap."""
    from plotly.subplots import make_subplots

    go = _go()
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("final bits per weight", "Hessian trace per weight (log)"))
    order = bsq.sort_values("layer_index").layer.tolist()
    for frame, name, color in ((bsq, "BSQ (learned)", RUN_COLORS[0]), (hessian, "Hessian (chosen)", RUN_COLORS[1])):
        rows = frame.set_index("layer").reindex(order)
        fig.add_trace(go.Bar(x=order, y=rows.nbits, name=name, marker_color=color, text=rows.nbits,
                             textposition="outside"), 1, 1)
    per = traces.set_index("layer").reindex(order)
    fig.add_trace(go.Bar(x=order, y=(per.trace / per.numel).clip(lower=1e-12), name="trace / weights",
                         marker_color="#777777", error_y=dict(array=per.trace_std / per.numel)), 2, 1)
    fig.update_yaxes(title_text="bits", range=[0, max(bsq.nbits.max(), hessian.nbits.max()) + 1.5], row=1, col=1)
    fig.update_yaxes(title_text="trace / weight", type="log", exponentformat="power", dtick=1,  # powers of ten only
                     row=2, col=1)
    return _style(fig, "where the two methods put the bits", 640, barmode="group", uniformtext=dict(minsize=14, mode="hide"),
                  xaxis2=dict(title="layer (network order)", type="category",
                              tickangle=_layer_tick_angle(order)), xaxis=dict(type="category"))


def compare_metrics(metrics: dict[str, pd.DataFrame]):
    """Test accuracy (%) and average bits of several runs, stages aligned (axes.aligned_steps:
    BSQ epoch 1 sits at the same x in every run, whatever its float pretraining), one colour per run."""
    from plotly.subplots import make_subplots

    go = _go()
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=("test accuracy (%)", "average bits per weight"))
    positions, ticks = aligned_steps(metrics)
    for i, (name, m) in enumerate(metrics.items()):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        x = positions[name]
        fig.add_trace(go.Scatter(x=x, y=100 * m.test_acc, name=name, legendgroup=name, line_color=color), 1, 1)
        fig.add_trace(go.Scatter(x=x, y=m.avg_bits, name=name, legendgroup=name, showlegend=False,
                                 line_shape="hv", line_color=color), 2, 1)
    fig.update_yaxes(range=_percent_range([a for m in metrics.values() for a in m.test_acc]), title_text="%",
                     row=1, col=1)
    fig.update_yaxes(title_text="bits", row=2, col=1)
    fig.update_xaxes(tickmode="array", tickvals=ticks.position.tolist(), ticktext=ticks.label.tolist())
    return _style(fig, "training curves" if len(metrics) == 1 else "the runs side by side", 600,
                  xaxis2_title=EPOCH_TITLE)


def bit_planes_image(w: torch.Tensor, nbits: int, max_side: int = 64, name: str = ""):
    """The bit planes of one weight tensor (layer `name`) as small images, MSB first: +1 where the
    weight's digit is in pos, -1 where it is in neg, 0 elsewhere; the last panel is the quantized
    weight. A conv weight is shown as (out channels, in channels x kernel), its top-left
    max_side x max_side corner."""
    from plotly.subplots import make_subplots

    from .bits import from_bits, to_bits

    go = _go()
    w2 = w.detach().float().reshape(w.shape[0], -1) if w.dim() > 1 else w.detach().float().reshape(1, -1)
    w2 = w2[:max_side, :max_side]
    pos, neg, scale = to_bits(w2, nbits)
    titles = [f"bit {b}" + (" (MSB)" if b == nbits - 1 else " (LSB)" if b == 0 else "") for b in range(nbits - 1, -1, -1)]
    cols = min(nbits + 1, 5)
    rows = math.ceil((nbits + 1) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles + ["quantized weight"],
                        horizontal_spacing=0.02, vertical_spacing=0.12)
    for i, b in enumerate(range(nbits - 1, -1, -1)):
        fig.add_trace(go.Heatmap(z=(pos[b] - neg[b]).numpy(), zmin=-1, zmax=1, showscale=False,
                                 colorscale=[[0, NEG], [0.5, "#ffffff"], [1, POS]],
                                 hovertemplate=f"bit {b}: %{{z}}<extra></extra>"), i // cols + 1, i % cols + 1)
    q = from_bits(pos, neg, scale).numpy()
    fig.add_trace(go.Heatmap(z=q, colorscale="RdBu", zmid=0, colorbar=dict(title="weight", len=1 / rows, y=1,
                                                                             yanchor="top", thickness=14),
                             hovertemplate="%{z:.4f}<extra></extra>"), nbits // cols + 1, nbits % cols + 1)
    # a frame around each panel: a plane's zeros are white, like the page
    fig.update_xaxes(showticklabels=False, showline=True, mirror=True, linecolor="#999999")
    fig.update_yaxes(showticklabels=False, autorange="reversed", showline=True, mirror=True, linecolor="#999999")
    title = (f"{name} {tuple(w.shape)}: " if name else "") + f"{nbits}-bit planes (blue: digit in pos, orange: in neg)"
    _style(fig, title, 220 * rows + 110)
    fig.update_layout(margin=dict(t=110))  # the figure title sits clear of the plane titles
    return fig


def error_curves(w: torch.Tensor, nbits: int, max_bits: int = 8):
    """Reconstruction error of w against precision (lessons.reconstruction_errors) on a log scale,
    with the half-step bound scale / (2 (2^n - 1)) and the chosen nbits marked."""
    from .lessons import reconstruction_errors

    go = _go()
    errors = reconstruction_errors(w, max_bits)
    fig = go.Figure()
    for column, label, color in (("max_abs_error", "largest error", RUN_COLORS[0]), ("rmse", "RMS error", RUN_COLORS[1])):
        fig.add_trace(go.Scatter(x=errors.nbits, y=errors[column], name=label, mode="lines+markers", line_color=color))
    # the largest error nearly reaches the bound: drawn last, wide and black, the bound shows through it
    fig.add_trace(go.Scatter(x=errors.nbits, y=errors.bound, name="bound: half a step", mode="lines",
                             line=dict(dash="dot", color="black", width=4)))
    fig.add_vline(x=nbits, line_color="crimson", annotation_text=f"{nbits} bit" + "s" * (nbits != 1),
                  annotation_font_size=16)
    return _style(fig, "reconstruction error against bits", 420, xaxis=dict(title="bits per weight", dtick=1),
                  yaxis=dict(title="error (weight units, log)", type="log", dtick=1,  # a label per decade only
                             exponentformat="power"))


def share_bit_columns_(*figs) -> None:
    """Ready bit heatmaps to stand side by side, each half as wide: the same bit columns (the union of
    theirs, most significant left), so that a 2-bit run's two columns sit under the same bits as an
    8-bit run's and are as wide; and no numbers in the cells, which half a page leaves too narrow for
    them (hover shows them)."""
    columns = sorted({int(c) for fig in figs for c in fig.data[0].x}, reverse=True)
    for fig in figs:
        fig.update_xaxes(categoryorder="array", categoryarray=[str(c) for c in columns],
                         range=[-0.5, len(columns) - 0.5])
        fig.update_traces(texttemplate=None)


def run_heatmap(run, value: str = "density"):
    """The last bit heatmap of a run, titled with its name, accuracy and size (catalog.caption)."""
    fig = bit_heatmap(run.bits, value=value)
    fig.update_layout(title_text=f"{run.name}<br>{caption(run)}", margin_t=80)  # two lines: a half-width chart
    return fig
