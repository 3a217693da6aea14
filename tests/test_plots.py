"""Figures checked on their data: traces, frames, axis ranges and colour ranges."""
import math

import pandas as pd
import pytest
import torch

from bsq_explore import analysis, plots
from bsq_explore.runs import list_runs, load_run, sweep_table
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
    assert fig.data[0].zmax == pytest.approx(run.bits.norm.max())
    first = fig.frames[0].data[0].z
    assert first[0][0] == pytest.approx(run.bits.query("step == 0 and layer == 'fc1' and bit == 7").norm.item())


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


def test_metrics_curves(run):
    fig = plots.metrics_curves(run.metrics)
    names = [t.name for t in fig.data]
    assert names == ["test acc", "train acc", "train loss", "R (bit Lasso)", "avg bits", "compression"]
    assert list(fig.data[0].y) == pytest.approx(run.metrics.test_acc.tolist())
    assert tuple(fig.layout.yaxis.range) == (0, 1.02)
    assert len([s for s in fig.layout.shapes if s.type == "rect"]) == 4 * run.metrics.stage.nunique()  # 4 panels
    assert [a.text for a in fig.layout.annotations][-2:] == ["bsq", "finetune"]


def test_pareto_marks_bsq_baselines_and_float():
    table = sweep_table(list_runs(EXAMPLES), "digits")
    fig = plots.pareto(table)
    bsq, uniform = fig.data
    finite = table[(table.kind == "bsq") & table.compression.map(math.isfinite)]
    assert sorted(bsq.x) == sorted(finite.compression) and list(bsq.x) == sorted(bsq.x)
    assert list(uniform.text) == ["2-bit", "3-bit", "4-bit", "8-bit"]
    assert fig.layout.xaxis.type == "log"
    float_line = [s for s in fig.layout.shapes if s.type == "line"][0]
    assert float_line.y0 == pytest.approx(table.query("kind == 'float'").test_acc.item())


def test_layer_precision_bars_one_group_per_alpha():
    runs = [load_run(EXAMPLES / n) for n in ("digits-a0", "digits-a0.3")]
    fig = plots.layer_precision_bars(analysis.sweep_layers(runs))
    assert [t.name for t in fig.data] == ["α=0", "α=0.3"] and fig.layout.barmode == "group"
    assert list(fig.data[0].y) == [8, 8, 8]
    assert list(fig.data[1].y) == analysis.final_layers(runs[1]).nbits.tolist()


def test_bit_planes_image_shows_signed_digits():
    w = torch.tensor([[3.0, -1.0], [0.0, 2.0]])  # scale 3 at 2 bits: q = 3, -1, 0, 2
    fig = plots.bit_planes_image(w, 2)
    msb, lsb, quantized = fig.data
    assert msb.z.tolist() == [[1, 0], [0, 1]] and lsb.z.tolist() == [[1, -1], [0, 0]]
    assert torch.allclose(torch.tensor(quantized.z), torch.tensor([[3.0, -1.0], [0.0, 2.0]]))
    assert (msb.zmin, msb.zmax) == (-1, 1)


def test_compare_metrics_shares_axes(run):
    other = load_run(EXAMPLES / "digits-a0")
    fig = plots.compare_metrics({"a": run.metrics, "b": other.metrics})
    assert [t.name for t in fig.data] == ["a", "a", "b", "b"] and fig.layout.xaxis.matches == "x2"
    assert fig.layout.xaxis2.title.text.startswith("epoch")
