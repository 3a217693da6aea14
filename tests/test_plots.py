"""Figures checked on their data: traces, frames, axis ranges and colour ranges."""
import math

import pandas as pd
import pytest
import torch

from bsq_explore import analysis, plots
from bsq_explore.catalog import finished_bsq, list_runs, sweep_table
from bsq_explore.runs import load_run

from test_sweep import EXAMPLES


@pytest.fixture(scope="module")
def run():
    return load_run(EXAMPLES / "digits-a0.3")


def test_bit_heatmap_one_epoch(run):
    fig = plots.bit_heatmap(run.bits)
    heat = fig.data[0]
    last = run.bits[run.bits.step == run.bits.step.max()]
    assert list(heat.y) == ["fc1", "fc2", "fc3"] and fig.layout.yaxis.autorange == "reversed"
    assert list(heat.x) == [str(b) for b in range(int(run.bits.bit.max()), int(run.bits.bit.min()) - 1, -1)]
    assert (heat.zmin, heat.zmax) == (0, 1)
    # a live plane shows its density; a removed plane is a gap (None) over the grey background
    z = dict(zip(heat.y, heat.z))
    for layer, rows in last.groupby("layer"):
        for bit, density in zip(rows.bit, rows.density):
            assert z[layer][list(heat.x).index(str(bit))] == pytest.approx(density)
    fc1_bits = set(last[last.layer == "fc1"].bit)
    assert all(v is None for b, v in zip(heat.x, z["fc1"]) if int(b) not in fc1_bits)
    assert fig.layout.plot_bgcolor == plots.REMOVED


def test_bit_heatmap_animation_and_norm(run):
    fig = plots.bit_heatmap_animation(run.bits, step=0, value="norm")
    steps = sorted(run.bits.step.unique())
    assert [f.name for f in fig.frames] == [str(s) for s in steps]
    assert len(fig.layout.sliders[0].steps) == len(steps) and fig.layout.updatemenus[0].buttons[0].label == "▶ play"
    assert fig.data[0].zmax == 1  # each plane's norm over its layer's largest in the run
    first = fig.frames[0].data[0].z
    fc1 = run.bits[run.bits.layer == "fc1"]
    assert first[0][0] == pytest.approx(fc1.query("step == 0 and bit == 7").norm.item() / fc1.norm.max())
    fc3 = run.bits[run.bits.layer == "fc3"]  # the small last layer: raw norms would make it look dead
    assert max(v for v in fig.frames[-1].data[0].z[2] if v is not None) == pytest.approx(
        fc3[fc3.step == fc3.step.max()].norm.max() / fc3.norm.max())
    assert fig.layout.sliders[0].active == 0, "it opens at the step asked for"


def test_every_animation_frame_shows_that_epochs_still_heatmap(run):
    fig = plots.bit_heatmap_animation(run.bits, value="norm")
    for frame in fig.frames[::7]:
        assert frame.traces == (0,)  # a frame changes only the values: colour scale and text stay
        assert frame.data[0].z == plots.bit_heatmap(run.bits, int(frame.name), "norm").data[0].z


def test_animation_controls_sit_above_the_plot_and_a_run_plays_slowly_enough_to_talk_over(run):
    fig = plots.bit_heatmap_animation(run.bits)
    assert fig.layout.sliders[0].active == len(fig.frames) - 1  # by default at the last epoch
    plot_height = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    title_room = fig.layout.margin.t - 50
    for control in (fig.layout.sliders[0], fig.layout.updatemenus[0]):
        assert control.yanchor == "bottom" and 0 < (control.y - 1) * plot_height < title_room  # under the title
    duration = fig.layout.updatemenus[0].buttons[0].args[1]["frame"]["duration"]
    assert 150 <= duration <= 800 and len(fig.frames) * duration / 1000 == pytest.approx(plots.FRAMES_SECONDS, rel=0.2)


def test_a_resnet20_heatmap_names_every_layer_in_rows_that_fit_one_screen():
    bits = pd.DataFrame([dict(stage="bsq", epoch=0, step=0, layer=f"layer{i}", layer_index=i, bit=b, nbits=8,
                              density=0.5, norm=1.0) for i in range(20) for b in range(8)])
    fig = plots.bit_heatmap(bits)
    assert list(fig.layout.yaxis.tickvals) == [f"layer{i}" for i in range(20)]  # not every other one
    assert fig.layout.height <= 470  # 20 rows of 17 px, under a page's title and controls at 1024x768
    assert fig.data[0].texttemplate is None  # no numbers squeezed into rows too low for them


def test_bit_heatmap_rejects_unknown_steps_and_values(run):
    with pytest.raises(ValueError, match="no bit frame at step"):
        plots.bit_heatmap(run.bits, step=999)
    with pytest.raises(ValueError, match="density"):
        plots.bit_heatmap(run.bits, value="colour")


def test_long_runs_animate_a_bounded_number_of_frames(run):
    many = pd.concat([run.bits.assign(step=run.bits.step + 100 * k) for k in range(10)], ignore_index=True)
    fig = plots.bit_heatmap_animation(many)
    assert len(fig.frames) <= plots.MAX_FRAMES + 1 and fig.frames[-1].name == str(many.step.max())


def test_precision_timeline(run):
    fig = plots.precision_timeline(run.layers)
    heat = fig.data[0]
    assert list(heat.y) == ["fc1", "fc2", "fc3"] and list(heat.x) == sorted(run.layers.step.unique())
    dotted = [s.x0 + 0.5 for s in fig.layout.shapes if s.line.dash == "dot"]
    assert dotted == [10, 20, 30, 40]  # requantized every 10 BSQ epochs, precision changed each time
    assert [s.x0 + 0.5 for s in fig.layout.shapes if s.line.color == "crimson"] == [41]  # finetune starts
    # each layer's bits printed where they change, so a row reads '8 ... 6 ... 4' without hovering
    fc1 = run.layers[run.layers.layer == "fc1"].sort_values("step")
    printed = {int(s): t for s, t in zip(heat.x, heat.text[0]) if t}
    changes = fc1[fc1.nbits.diff().ne(0)]
    assert printed == {int(s): f"{b:g}" for s, b in zip(changes.step, changes.nbits)} and heat.texttemplate == "%{text}"
    ticks = fig.layout.xaxis.tickvals  # every stage's start is labelled, and no two labels crowd each other
    starts = run.layers.drop_duplicates("stage").step
    assert set(starts) <= set(ticks) and min(b - a for a, b in zip(ticks, ticks[1:])) >= 3


def test_metrics_curves(run):
    fig = plots.metrics_curves(run.metrics)
    assert fig.layout.yaxis2.rangemode == fig.layout.yaxis3.rangemode == "tozero"  # losses: no negative ticks
    names = [t.name for t in fig.data]
    assert names == ["test accuracy", "train accuracy", "train loss (CE)", "R (bit Lasso)", "average bits",
                     "compression"]
    assert list(fig.data[0].y) == pytest.approx((100 * run.metrics.test_acc).tolist())  # in %
    lo, hi = fig.layout.yaxis.range  # from just below the lowest accuracy: a point's difference shows
    low = 100 * min(run.metrics.test_acc.min(), run.metrics.train_acc.min())
    assert low - 3 <= lo <= low and hi == 100.5 and fig.layout.yaxis.title.text == "%"
    ticks = dict(zip(fig.layout.xaxis.tickvals, fig.layout.xaxis.ticktext))
    assert ticks[run.metrics.query("stage == 'bsq' and epoch == 0").step.item()] == "bsq 0"  # stage and epoch
    assert len([s for s in fig.layout.shapes if s.type == "rect"]) == 4 * run.metrics.stage.nunique()  # 4 panels
    assert [a.text for a in fig.layout.annotations][-2:] == ["bsq", "finetune"]


def test_pareto_marks_bsq_baselines_and_float():
    table = sweep_table(list_runs(EXAMPLES), "digits")
    fig = plots.pareto(table)
    by_name = {t.name: t for t in fig.data}
    line, uniform, twins = by_name["BSQ, in order"], by_name["uniform k-bit"], by_name["Hessian-chosen bits"]
    points = [t for t in fig.data if t.name.startswith("α=")]
    finite = table[(table.kind == "bsq") & table.compression.map(math.isfinite)].sort_values("compression")
    assert sorted(twins.customdata) == sorted(table[table.kind == "hessian"].name)  # the shipped Hessian twins
    assert set(twins.marker.symbol) == {"diamond"}
    inside = [p.symbol == "circle" for p in (q.marker for q in points)]  # alphas 0.5 and 1 collapse to 8.6 %
    assert inside.count(False) == 2 and list(line.x) == [p.x[0] for p in points]  # in order of compression
    assert [y is not None for y in line.y] == inside  # the line joins the framed points, a gap at each in the strip
    colors = plots.alpha_colors(table[table.kind == "bsq"].alpha)
    assert [(p.name, p.marker.color, p.customdata[0]) for p in points] == [
        (f"α={a:g}", colors[a], n) for a, n in zip(finite.alpha, finite.name)]
    assert [a.text for a in fig.layout.annotations if a.yref == "paper" and a.y == 1] == ["8-bit", "4-bit", "3-bit",
                                                                                           "2-bit"]
    assert list(uniform.y) == pytest.approx(100 * table[table.kind == "uniform"].sort_values("nbits").test_acc[::-1])
    float_line = [s for s in fig.layout.shapes if s.type == "line" and s.line.dash == "dash"][0]
    assert float_line.y0 == pytest.approx(100 * table.query("kind == 'float'").test_acc.item())
    # log x axis ticked at powers of two, labelled as compression factors, no minor labels
    assert fig.layout.xaxis.type == "log" and all(math.log2(v).is_integer() for v in fig.layout.xaxis.tickvals)
    assert list(fig.layout.xaxis.ticktext) == [f"{v:g}x" for v in fig.layout.xaxis.tickvals]


def test_pareto_frames_where_the_choice_is_made_and_puts_collapsed_runs_in_a_strip_under_it():
    table = sweep_table(list_runs(EXAMPLES), "fashion")  # a0.2 and a0.5 collapse to 10 % (1006x, 7648x), u1 75.8 %
    fig = plots.pareto(table)
    float_acc = 100 * table.query("kind == 'float'").test_acc.item()
    lo, hi = fig.layout.yaxis.range
    assert float_acc - plots.PARETO_BAND - 3 <= lo < 83.5 and hi >= float_acc  # a0.1 (83.7 %) is the lowest inside
    x_lo, x_hi = (10 ** v for v in fig.layout.xaxis.range)
    assert x_hi < 64 and x_lo < 4  # not 8192x: the runs that matter spread over the width
    points = {p.customdata[0]: p for p in fig.data if p.name.startswith("α=")}
    uniform = fig.data[-1]
    one_bit = dict(zip(uniform.customdata, uniform.x))["fashion-u1"]  # 32x: in the strip at its own x
    beyond = []  # 1006x and 7648x: past the frame's right edge, each apart, in order, not on the 1-bit baseline
    for name in ("fashion-a0.2", "fashion-a0.5"):
        (x,), (y,) = points[name].x, points[name].y
        assert lo < y < 83.5 and one_bit < x < x_hi and points[name].marker.symbol == "triangle-se"
        beyond.append(math.log10(x))
    assert beyond[0] < beyond[1] and beyond[0] - math.log10(one_bit) > 0.02 and beyond[1] - beyond[0] > 0.02
    assert points["fashion-a0.02"].marker.symbol == "circle"
    assert points["fashion-a0.02"].y[0] == pytest.approx(100 * table.set_index("name").test_acc["fashion-a0.02"])
    assert dict(zip(uniform.customdata, uniform.marker.symbol))["fashion-u1"] == "triangle-down"
    corner = next(a.text for a in fig.layout.annotations if a.text.startswith("▼ below the frame, ◢ right of it:"))
    assert "◢ α=0.2: 10.0 %, 1006x" in corner and "◢ α=0.5: 10.0 %, 7648x" in corner
    assert "1-bit: 75.8 %, 32x" in corner and "◢ 1-bit" not in corner  # in the strip, not right of the frame
    strip, = [s for s in fig.layout.shapes if s.type == "rect" and s.yref == "y"]  # grey, under the frame
    assert strip.y0 == pytest.approx(lo) and strip.y1 < 83.6 and strip.y0 < y < strip.y1
    band, = [s for s in fig.layout.shapes if s.type == "rect" and s.xref == "x"]  # grey, right of it: no x is true
    assert one_bit < band.x0 < min(10 ** b for b in beyond) and max(10 ** b for b in beyond) < band.x1 <= x_hi
    assert min(fig.layout.yaxis.tickvals) >= strip.y1  # no accuracy tick beside a point that is not at its accuracy
    assert 100 * table.set_index("name").test_acc["fashion-a0.1"] == pytest.approx(fig.data[0].y[-3])  # then gaps


def test_pareto_names_no_baseline_right_of_its_frame_and_draws_no_band_without_one():
    table = sweep_table(list_runs(EXAMPLES), "fashion")
    narrow = table[~table.name.str.fullmatch(r"fashion-[ah]0\.(03|05|1)")]  # the frame ends near 13x
    fig = plots.pareto(narrow)
    uniform = fig.data[-1]
    assert dict(zip(uniform.customdata, uniform.marker.symbol))["fashion-u1"] == "triangle-se"  # 32x: past the edge
    named = [a.text for a in fig.layout.annotations if a.yref == "paper" and a.y == 1]
    assert "1-bit" not in named and "2-bit" in named, "a baseline's name stands at its true compression, or nowhere"
    inside = plots.pareto(table[~table.name.isin(["fashion-a0.2", "fashion-a0.5"])])  # u1 the only run in the strip
    assert not [s for s in inside.layout.shapes if s.type == "rect" and s.xref == "x"]
    assert 10 ** inside.layout.xaxis.range[1] < 40, "no room kept past the edge for runs that are not there"


def test_pareto_lists_many_collapsed_runs_in_lines_under_their_triangles():
    table = sweep_table(list_runs(EXAMPLES), "fashion")
    collapsed = table[table.name == "fashion-a0.5"]
    many = pd.concat([table] + [collapsed.assign(name=f"c{i}", alpha=1.0 + i) for i in range(7)])  # 10 runs below
    fig = plots.pareto(many)
    strip, = [s for s in fig.layout.shapes if s.type == "rect" and s.yref == "y"]
    note = next(a for a in fig.layout.annotations if a.text.startswith("▼ below the frame"))
    lines = note.text.split("<br>")
    assert len(lines) == 5 and all(line.count("%") <= 2 for line in lines) and note.text.count("%") == 10  # 2 a line
    assert note.y == strip.y0 and note.yanchor == "bottom"  # the list fills the strip from its bottom up...
    rows = (strip.y1 - strip.y0) / (len(lines) + 1)  # ...a row for each line, and one above them
    symbols = lambda t: [t.marker.symbol] * len(t.y) if isinstance(t.marker.symbol, str) else t.marker.symbol  # noqa: E731
    triangles = [(x, y) for t in fig.data if t.mode == "markers" for s, x, y in zip(symbols(t), t.x, t.y)
                 if s in ("triangle-down", "triangle-se")]
    assert len(triangles) == 10 and all(strip.y1 - rows <= y < strip.y1 for _, y in triangles)  # ...for the triangles
    assert len({x for x, _ in triangles}) == 10, "the 9 runs right of the frame spread past its edge, apart"


def test_alpha_colours_are_ordered_and_the_same_on_every_chart():
    colors = plots.alpha_colors([0.3, 0, 1, 0.1])
    assert list(colors) == [0, 0.1, 0.3, 1] and len(set(colors.values())) == 4
    lightness = [sum(int(c.strip("rgb()").split(",")[i]) for i in range(3)) for c in colors.values()]
    assert lightness == sorted(lightness), "Viridis runs dark to light: the order reads without hue"
    runs = [load_run(EXAMPLES / n) for n in ("digits-a0", "digits-a0.3", "digits-a1")]
    table = sweep_table(list_runs(EXAMPLES), "digits")
    bars = plots.layer_precision_bars(analysis.sweep_layers(runs), plots.alpha_colors(table.alpha.dropna()))
    pareto = plots.pareto(table)
    on_pareto = {p.name: p.marker.color for p in pareto.data if p.name.startswith("α=")}
    assert [b.marker.color for b in bars.data] == [on_pareto[b.name] for b in bars.data]


def test_layer_precision_bars_one_group_per_alpha():
    runs = [load_run(EXAMPLES / n) for n in ("digits-a0", "digits-a0.3")]
    fig = plots.layer_precision_bars(analysis.sweep_layers(runs))
    assert [t.name for t in fig.data] == ["α=0", "α=0.3"] and fig.layout.barmode == "group"
    assert list(fig.data[0].y) == [8, 8, 8]
    assert list(fig.data[1].y) == runs[1].final_layers().nbits.tolist()
    assert list(fig.data[1].text) == list(fig.data[1].y) and fig.layout.yaxis.range[1] >= 9  # 8 printed above 8
    fashion = [load_run(EXAMPLES / n) for n in sorted(finished_bsq(sweep_table(list_runs(EXAMPLES), "fashion")).name)]
    crowded = plots.layer_precision_bars(analysis.sweep_layers(fashion))  # 5 layers x 11 alphas: bars ~12 px wide
    assert all(t.text is None for t in crowded.data), "numbers on bars that narrow run together"
    assert fig.layout.xaxis.tickangle is None and crowded.layout.xaxis.tickangle is None  # plotly's own: level
    resnet = plots.layer_precision_bars(analysis.sweep_layers([load_run(EXAMPLES / "cifar10-a0.05")]))
    assert resnet.layout.xaxis.tickangle == -60, "20 layer names at plotly's 30 degrees touch at 1024 px"


def test_bit_planes_image_shows_signed_digits():
    w = torch.tensor([[3.0, -1.0], [0.0, 2.0]])  # scale 3 at 2 bits: q = 3, -1, 0, 2
    fig = plots.bit_planes_image(w, 2)
    msb, lsb, quantized = fig.data
    assert msb.z.tolist() == [[1, 0], [0, 1]] and lsb.z.tolist() == [[1, -1], [0, 0]]
    assert torch.allclose(torch.tensor(quantized.z), torch.tensor([[3.0, -1.0], [0.0, 2.0]]))
    assert (msb.zmin, msb.zmax) == (-1, 1)
    assert not msb.showscale and quantized.colorbar.title.text == "weight"  # the weights' colours have a scale
    assert all(fig.layout[a].showline and fig.layout[a].mirror for a in ("xaxis", "yaxis3"))  # a frame per panel


def test_compare_metrics_aligns_stages_and_keeps_one_colour_per_run(tiny_run):
    run = load_run(tiny_run)
    sweep_run = load_run(EXAMPLES / "digits-a0")  # starts from the shared float model: no pretraining
    assert not (sweep_run.metrics.stage == "pretrain").any() and (run.metrics.stage == "pretrain").any()
    fig = plots.compare_metrics({"a": run.metrics, "b": sweep_run.metrics})
    assert [t.name for t in fig.data] == ["a", "a", "b", "b"] and fig.layout.xaxis.matches == "x2"
    assert fig.layout.xaxis2.title.text.startswith("epoch")
    assert fig.data[0].line.color == fig.data[1].line.color != fig.data[2].line.color == fig.data[3].line.color
    for trace, m in ((fig.data[0], run.metrics), (fig.data[2], sweep_run.metrics)):
        x = dict(zip(zip(m.stage, m.epoch), trace.x))
        assert x[("bsq", 1)] == dict(zip(zip(run.metrics.stage, run.metrics.epoch), fig.data[0].x))[("bsq", 1)]
    assert list(fig.data[0].y) == pytest.approx((100 * run.metrics.test_acc).tolist())
    ticks = dict(zip(fig.layout.xaxis.tickvals, fig.layout.xaxis.ticktext))
    assert "bsq 0" in ticks.values() and list(ticks.values())[-1] == "finetune 20"
    gaps = [b - a for a, b in zip(list(ticks), list(ticks)[1:])]
    assert min(gaps) >= (max(fig.data[0].x) + 1) / 10  # no two labels on top of each other
    long = plots.compare_metrics({"f": load_run(EXAMPLES / "digits-float").metrics, "b": sweep_run.metrics})
    assert list(long.layout.xaxis.ticktext) == ["pretrain 1", "bsq 0", "finetune 1", "finetune 20"]
    assert long.layout.title.text == "the runs side by side" and plots.compare_metrics(
        {"a": run.metrics}).layout.title.text == "training curves"


def test_precision_timeline_shows_an_empty_layer_as_removed(run):
    layers = run.layers.copy()
    layers.loc[layers.layer == "fc2", "nbits"] = 0
    z = dict(zip(plots.precision_timeline(layers).data[0].y, plots.precision_timeline(layers).data[0].z))
    assert all(v is None for v in z["fc2"]) and all(v is not None for v in z["fc1"])


@pytest.mark.parametrize("make", ["bit_heatmap", "bit_heatmap_animation", "precision_timeline", "metrics_curves",
                                  "pareto", "layer_precision_bars", "compare_metrics", "bit_planes_image",
                                  "error_curves"])
def test_every_figure_is_made_for_a_projector(run, make):
    w = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    args = {"bit_heatmap": (run.bits,), "bit_heatmap_animation": (run.bits,), "precision_timeline": (run.layers,),
            "metrics_curves": (run.metrics,), "pareto": (sweep_table(list_runs(EXAMPLES), "digits"),),
            "layer_precision_bars": (analysis.sweep_layers([run]),), "compare_metrics": ({"a": run.metrics},),
            "bit_planes_image": (w, 3), "error_curves": (w, 3)}[make]
    fig = getattr(plots, make)(*args)
    assert fig.layout.font.size >= 16 and fig.layout.title.font.size >= 16 and fig.layout.title.text
    assert fig.layout.font.color == "#1a1a1a" and fig.layout.template.layout.paper_bgcolor == "white"
    if make != "bit_planes_image":  # its panels are images of a matrix: no axes to name
        layout = fig.layout.to_plotly_json()
        assert any(v.get("title", {}).get("text") for k, v in layout.items() if k.startswith("xaxis"))
        assert fig.layout.yaxis.title.text


def test_bit_heatmap_prints_values_where_they_fit(run):
    heat = plots.bit_heatmap(run.bits).data[0]
    assert heat.texttemplate == "%{z:.2f}" and heat.textfont.size >= 14
    many = pd.concat([run.bits.assign(layer=run.bits.layer + f"_{k}", layer_index=run.bits.layer_index + 3 * k)
                      for k in range(30)], ignore_index=True)  # 90 layers x 8 bits: too many cells to print
    assert plots.bit_heatmap(many).data[0].texttemplate is None


def test_heatmaps_share_bit_columns_share_their_bit_columns_and_print_no_numbers():
    eight = load_run(EXAMPLES / "fashion-a0.02").bits
    two = load_run(EXAMPLES / "fashion-u2").bits
    a, b = plots.bit_heatmap(eight), plots.bit_heatmap(two)
    assert list(b.data[0].x) == ["1", "0"] and a.data[0].texttemplate  # alone: two columns, numbers printed
    plots.share_bit_columns_(a, b)
    for fig in (a, b):
        assert list(fig.layout.xaxis.categoryarray) == [str(c) for c in range(7, -1, -1)]
        assert list(fig.layout.xaxis.range) == [-0.5, 7.5] and fig.data[0].texttemplate is None


def test_twin_bits_shows_both_methods_bits_over_the_trace_per_weight():
    layers = lambda bits: pd.DataFrame(dict(layer=["a", "b", "c"], layer_index=[0, 1, 2], nbits=bits))  # noqa: E731
    traces = pd.DataFrame(dict(layer=["c", "a", "b"], numel=[10, 100, 1000], trace=[5.0, 20.0, 2.0],
                               trace_std=[0.5, 1.0, 0.2]))
    fig = plots.twin_bits(layers([6, 3, 2]), layers([8, 2, 2]), traces)
    bsq, hessian, per = fig.data
    assert list(bsq.x) == ["a", "b", "c"] and list(bsq.y) == [6, 3, 2] and list(hessian.y) == [8, 2, 2]
    assert list(per.y) == pytest.approx([0.2, 0.002, 0.5]) and fig.layout.yaxis2.type == "log"
    assert list(per.error_y.array) == pytest.approx([0.01, 0.0002, 0.05])
    assert fig.layout.yaxis.range[1] >= 9  # room above the 8-bit bar for its number
    assert fig.layout.yaxis2.dtick == 1  # labels at powers of ten only: no "2 3 4 5" crammed between them
    assert fig.layout.xaxis2.tickangle is None  # three names: plotly's own angle, level
    names = [f"layer{i}" for i in range(20)]  # a ResNet-20's twenty: tilted apart
    twenty = lambda bits: pd.DataFrame(dict(layer=names, layer_index=range(20), nbits=bits))  # noqa: E731
    many = plots.twin_bits(twenty([4] * 20), twenty([3] * 20), pd.DataFrame(dict(
        layer=names, numel=[100] * 20, trace=[1.0] * 20, trace_std=[0.1] * 20)))
    assert many.layout.xaxis2.tickangle == -60


def test_pareto_hover_names_each_points_own_size_and_accuracy():
    table = sweep_table(list_runs(EXAMPLES), "fashion")
    uniform = next(t for t in plots.pareto(table).data if t.name == "uniform k-bit")
    expected = {r.name: f"{r.compression:.1f}x, {100 * r.test_acc:.1f} %" for r in table.itertuples()}
    assert list(uniform.text) == [expected[n] for n in uniform.customdata] and "%{text}" in uniform.hovertemplate


def test_aligned_steps_of_runs_with_no_epoch_yet_are_empty():
    from bsq_explore.axes import aligned_steps

    empty = pd.DataFrame(columns=["stage", "epoch"])
    positions, ticks = aligned_steps({"a": empty, "b": empty})
    assert ticks.empty and all(p.empty for p in positions.values())
