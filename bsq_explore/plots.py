"""Plotly figures shared by the notebooks and the app. plotly is imported when a figure is made."""
from __future__ import annotations

import math

import pandas as pd
import torch

from .analysis import epoch_labels

REMOVED = "#d9d9d9"      # the plot background shows through where a plane no longer exists
STAGE_COLORS = {"pretrain": "rgba(120,120,120,0.10)", "bsq": "rgba(31,119,180,0.08)", "finetune": "rgba(44,160,44,0.10)"}
MAX_FRAMES = 200         # longer runs animate every k-th epoch (the slider still reaches every one)


def _go():
    import plotly.graph_objects as go

    return go


def _grid(bits: pd.DataFrame, layers: list[str], columns: list[int], value: str) -> list[list[float | None]]:
    """(layer x bit) values of one epoch, None where the plane does not exist."""
    table = bits.pivot_table(index="layer", columns="bit", values=value, aggfunc="first")
    table = table.reindex(index=layers, columns=columns)
    return [[None if math.isnan(v) else float(v) for v in row] for row in table.to_numpy()]


def _heatmap_trace(bits: pd.DataFrame, value: str):
    """(trace(step), steps frame, {step: label}) of bit_heatmap: one grid shape and colour scale for every epoch."""
    go = _go()
    if value not in ("density", "norm"):
        raise ValueError(f"value must be 'density' or 'norm', not {value!r}")
    if bits.empty:
        raise ValueError("no bit frames yet: the run has not reached BSQ training")
    layers = bits.drop_duplicates("layer").sort_values("layer_index").layer.tolist()
    columns = list(range(int(bits.bit.max()), int(bits.bit.min()) - 1, -1))  # MSB first
    zmax = 1.0 if value == "density" else float(bits.norm.max()) or 1.0
    steps = bits.drop_duplicates("step").sort_values("step")
    groups = dict(tuple(bits.groupby("step")))
    hover = "layer %{y}<br>bit %{x}<br>" + value + " %{z:.3f}<extra></extra>"

    def trace(s):
        return go.Heatmap(z=_grid(groups[s], layers, columns, value), x=[str(c) for c in columns], y=layers,
                          zmin=0, zmax=zmax, colorscale="Viridis", hovertemplate=hover, hoverongaps=False,
                          colorbar=dict(title=value))
    return trace, steps, dict(zip(steps.step, epoch_labels(steps)))


def bit_heatmap(bits: pd.DataFrame, step: int | None = None, value: str = "density"):
    """Layers (network order, top to bottom) x bits (most significant on the left) at one epoch
    (step, default the last).

    Colour is the plane's density on a fixed 0..1 scale (or its group norm, value='norm', on
    0..the run's largest norm); removed planes show the grey background, so a live plane that is
    merely sparse (dark) never looks like a dead one.
    """
    trace, steps, labels = _heatmap_trace(bits, value)
    step = int(steps.step.iloc[-1]) if step is None else int(step)
    if step not in labels:
        raise ValueError(f"no bit frame at step {step}; steps run from {steps.step.min()} to {steps.step.max()}")
    fig = _go().Figure(trace(step))
    fig.update_layout(title=f"bit planes, {labels[step]}", xaxis_title="bit (most significant left)",
                      yaxis=dict(title="layer", autorange="reversed", type="category"),
                      xaxis=dict(type="category"), plot_bgcolor=REMOVED, height=max(260, 28 * len(fig.data[0].y) + 140),
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def bit_heatmap_animation(bits: pd.DataFrame, step: int | None = None, value: str = "density"):
    """bit_heatmap with every epoch as an animation frame (at most MAX_FRAMES, the last always),
    a slider and a play button; it opens at step (default the last)."""
    go = _go()
    fig = bit_heatmap(bits, step, value)
    trace, steps, labels = _heatmap_trace(bits, value)
    step = int(steps.step.iloc[-1]) if step is None else int(step)
    shown = steps.step.tolist()[:: max(1, math.ceil(len(steps) / MAX_FRAMES))]
    if shown[-1] != steps.step.iloc[-1]:
        shown.append(int(steps.step.iloc[-1]))
    fig.frames = [go.Frame(data=[trace(s)], name=str(s), layout=dict(title=f"bit planes, {labels[s]}"))
                  for s in shown]
    play = dict(frame=dict(duration=150, redraw=True), fromcurrent=True, transition=dict(duration=0))
    fig.update_layout(
        updatemenus=[dict(type="buttons", showactive=False, x=0, y=-0.08, xanchor="left", buttons=[
            dict(label="▶ play", method="animate", args=[None, play]),
            dict(label="❚❚ pause", method="animate",
                 args=[[None], dict(mode="immediate", frame=dict(duration=0, redraw=False))])])],
        sliders=[dict(active=shown.index(step) if step in shown else len(shown) - 1, x=0.12, len=0.88,
                      y=-0.02, currentvalue=dict(prefix="epoch: "),
                      steps=[dict(label=labels[s], method="animate",
                                  args=[[str(s)], dict(mode="immediate", frame=dict(duration=0, redraw=True))])
                             for s in shown])])
    return fig


def _stage_bands(fig, metrics: pd.DataFrame) -> None:
    """Shade each stage in every panel; name it once, above the first panel."""
    for stage, rows in metrics.groupby("stage", sort=False):
        lo, hi = rows.step.min(), rows.step.max()
        fig.add_vrect(x0=lo - 0.5, x1=hi + 0.5, fillcolor=STAGE_COLORS.get(stage, "rgba(0,0,0,0.05)"),
                      line_width=0, layer="below")
        fig.add_annotation(x=lo - 0.5, y=1.0, xref="x", yref="y domain", text=stage, showarrow=False,
                           xanchor="left", yanchor="bottom")


def precision_timeline(layers: pd.DataFrame, requant_steps: list[int] | None = None):
    """Layer x epoch heatmap of each layer's bits, stage changes as solid and
    re-quantizations (requant_steps, default: every step where some layer's bits changed) as dotted lines."""
    go = _go()
    if layers.empty:
        raise ValueError("no layer frames yet: the run has not reached BSQ training")
    order = layers.drop_duplicates("layer").sort_values("layer_index").layer.tolist()
    table = layers.pivot_table(index="layer", columns="step", values="nbits", aggfunc="last").reindex(order)
    steps = layers.drop_duplicates("step").sort_values("step")
    fig = go.Figure(go.Heatmap(z=table.to_numpy(), x=table.columns.tolist(), y=order, colorscale="Blues",
                               zmin=0, zmax=max(8, int(layers.nbits.max())), colorbar=dict(title="bits"),
                               hovertemplate="layer %{y}<br>step %{x}<br>%{z} bits<extra></extra>"))
    if requant_steps is None:
        changed = table.diff(axis=1).ne(0).any(axis=0)
        requant_steps = [s for s, c in zip(table.columns[1:], changed.iloc[1:]) if c]
    for s in requant_steps:
        fig.add_vline(x=s - 0.5, line_dash="dot", line_color="black", line_width=1)
    starts = steps.drop_duplicates("stage").step.tolist()[1:]
    for s in starts:
        fig.add_vline(x=s - 0.5, line_color="crimson", line_width=2)
    fig.update_layout(title="precision per layer (dotted: re-quantization, red: stage change)",
                      xaxis_title="epoch (since the run began)", yaxis=dict(autorange="reversed", type="category"),
                      height=max(260, 26 * len(order) + 120), margin=dict(l=10, r=10, t=50, b=10))
    return fig


def metrics_curves(metrics: pd.DataFrame):
    """Accuracy, losses, average bits and compression against epochs, stages shaded."""
    from plotly.subplots import make_subplots

    go = _go()
    fig = make_subplots(rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=("accuracy", "loss (CE) and regularizer R", "average bits", "compression"),
                        specs=[[{}], [{"secondary_y": True}], [{}], [{}]])
    x = metrics.step
    fig.add_trace(go.Scatter(x=x, y=metrics.test_acc, name="test acc", mode="lines+markers"), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=metrics.train_acc, name="train acc", mode="lines"), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=metrics.train_loss, name="train loss"), 2, 1)
    fig.add_trace(go.Scatter(x=x, y=metrics.reg_loss, name="R (bit Lasso)", line=dict(dash="dot")), 2, 1,
                  secondary_y=True)
    fig.add_trace(go.Scatter(x=x, y=metrics.avg_bits, name="avg bits", line_shape="hv"), 3, 1)
    fig.add_trace(go.Scatter(x=x, y=metrics.compression.where(metrics.compression.map(math.isfinite)),
                             name="compression", line_shape="hv"), 4, 1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    _stage_bands(fig, metrics)
    fig.update_layout(height=760, margin=dict(l=10, r=10, t=40, b=10), xaxis4_title="epoch (since the run began)")
    return fig


def pareto(table: pd.DataFrame):
    """Compression (x, log) against final test accuracy (y) over a sweep table (runs.sweep_table):
    BSQ runs as a line labelled by alpha, uniform baselines as squares, the float model as a line."""
    go = _go()
    fig = go.Figure()
    done = table[table.status == "finished"]
    bsq = done[(done.kind == "bsq") & done.compression.map(lambda c: c is not None and math.isfinite(c))]
    bsq = bsq.sort_values("compression")
    fig.add_trace(go.Scatter(x=bsq.compression, y=bsq.test_acc, mode="lines+markers+text", name="BSQ",
                             text=[f"α={a:g}" for a in bsq.alpha], textposition="top center", textfont_size=10,
                             customdata=bsq.name, hovertemplate="%{customdata}<br>%{x:.1f}x, acc %{y:.3f}<extra></extra>"))
    uniform = done[done.kind == "uniform"].sort_values("nbits")
    fig.add_trace(go.Scatter(x=uniform.compression, y=uniform.test_acc, mode="markers+text", name="uniform",
                             marker=dict(symbol="square", size=10), text=[f"{b}-bit" for b in uniform.nbits],
                             textposition="bottom center", textfont_size=10, customdata=uniform.name,
                             hovertemplate="%{customdata}<br>%{x:.1f}x, acc %{y:.3f}<extra></extra>"))
    floats = done[done.kind == "float"]
    if len(floats):
        fig.add_hline(y=float(floats.test_acc.iloc[0]), line_dash="dash", annotation_text="float model",
                      annotation_position="bottom right")
    gone = len(done[(done.kind == "bsq")]) - len(bsq)
    fig.update_layout(title="accuracy against compression" + (f" ({gone} empty run(s) off the chart)" if gone else ""),
                      xaxis=dict(title="compression (x, vs float32)", type="log"),
                      yaxis=dict(title="test accuracy"), margin=dict(l=10, r=10, t=50, b=10), height=460)
    return fig


def layer_precision_bars(layers: pd.DataFrame):
    """Final bits of each layer, one bar group per layer and one colour per alpha (analysis.sweep_layers)."""
    go = _go()
    fig = go.Figure()
    order = layers.drop_duplicates("layer").sort_values("layer_index").layer.tolist() if len(layers) else []
    for alpha, rows in layers.groupby("alpha"):
        rows = rows.set_index("layer").reindex(order)
        fig.add_trace(go.Bar(x=order, y=rows.nbits, name=f"α={alpha:g}"))
    fig.update_layout(barmode="group", title="final precision per layer", xaxis=dict(title="layer", type="category"),
                      yaxis_title="bits", margin=dict(l=10, r=10, t=50, b=10), height=420)
    return fig


def compare_metrics(metrics: dict[str, pd.DataFrame]):
    """Test accuracy and average bits of several runs on shared axes."""
    from plotly.subplots import make_subplots

    go = _go()
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=("test accuracy", "average bits"))
    for name, m in metrics.items():
        fig.add_trace(go.Scatter(x=m.step, y=m.test_acc, name=name, legendgroup=name), 1, 1)
        fig.add_trace(go.Scatter(x=m.step, y=m.avg_bits, name=name, legendgroup=name, showlegend=False,
                                 line_shape="hv"), 2, 1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    fig.update_layout(height=520, margin=dict(l=10, r=10, t=40, b=10), xaxis2_title="epoch (since the run began)")
    return fig


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
                        horizontal_spacing=0.02, vertical_spacing=0.08)
    for i, b in enumerate(range(nbits - 1, -1, -1)):
        fig.add_trace(go.Heatmap(z=(pos[b] - neg[b]).numpy(), zmin=-1, zmax=1, showscale=False,
                                 colorscale=[[0, "#d62728"], [0.5, "#ffffff"], [1, "#1f77b4"]],
                                 hovertemplate=f"bit {b}: %{{z}}<extra></extra>"), i // cols + 1, i % cols + 1)
    q = from_bits(pos, neg, scale).numpy()
    fig.add_trace(go.Heatmap(z=q, colorscale="RdBu", zmid=0, showscale=False,
                             hovertemplate="%{z:.4f}<extra></extra>"), nbits // cols + 1, nbits % cols + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed")
    fig.update_layout(height=190 * rows + 40, margin=dict(l=10, r=10, t=40, b=10),
                      title=(f"{name} {tuple(w.shape)}: " if name else "") +
                      f"{nbits}-bit planes (blue: digit in pos, red: digit in neg)")
    return fig


def error_curves(w: torch.Tensor, nbits: int, max_bits: int = 8):
    """Reconstruction error of w against precision (analysis.reconstruction_errors) on a log scale,
    with the half-step bound scale / (2 (2^n - 1)) and the chosen nbits marked."""
    from .analysis import reconstruction_errors

    go = _go()
    errors = reconstruction_errors(w, max_bits)
    fig = go.Figure()
    for column, dash in (("max_abs_error", None), ("rmse", None), ("bound", "dot")):
        fig.add_trace(go.Scatter(x=errors.nbits, y=errors[column], name=column, mode="lines+markers",
                                 line=dict(dash=dash)))
    fig.add_vline(x=nbits, line_color="crimson", annotation_text=f"{nbits} bits")
    fig.update_layout(title="reconstruction error against bits", xaxis=dict(title="nbits", dtick=1),
                      yaxis=dict(title="error (weight units)", type="log"), height=360,
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def run_heatmap(run, value: str = "density"):
    """The last bit heatmap of a run, titled with its name, accuracy and size (Run.caption)."""
    fig = bit_heatmap(run.bits, value=value)
    fig.update_layout(title=f"{run.name}: {run.caption}")
    return fig
