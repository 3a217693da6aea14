"""The notebooks' widget callbacks, across their knob ranges, against hand-computed or library oracles."""
import math

import pandas as pd
import pytest
import torch

from bsq_explore import analysis, axes, catalog, data, export, lessons, notebook, paths, plots
from bsq_explore.bits import from_bits, levels, to_bits
from bsq_explore.catalog import caption, list_runs, sweep_table
from bsq_explore.config import preset
from bsq_explore.data import load
from bsq_explore.runs import Run, load_run
from bsq_explore.store import FRAME_COLUMNS
from bsq_explore.train import Event, evaluate, train

from conftest import TINY

NBITS = range(1, 9)  # the nbits slider of notebook 01


def z_oracle(bits: pd.DataFrame, value: str = "density", run_bits: pd.DataFrame | None = None) -> dict:
    """{(layer, bit): value} of one epoch's bit frame: what every heatmap cell must show (a norm
    as a share of its layer's largest in run_bits, the whole run shown, by default bits)."""
    top = (bits if run_bits is None else run_bits).groupby("layer").norm.max()
    shown = bits[value] if value == "density" else bits.norm / bits.layer.map(top)
    return {(layer, str(bit)): v for layer, bit, v in zip(bits.layer, bits.bit, shown)}


def assert_heatmap_shows(heat, bits: pd.DataFrame, value: str = "density", run_bits: pd.DataFrame | None = None):
    expected = z_oracle(bits, value, run_bits)
    for layer, row in zip(heat.y, heat.z):
        for bit, cell in zip(heat.x, row):
            if (layer, bit) in expected:
                assert cell == pytest.approx(expected[(layer, bit)])
            else:
                assert cell is None, f"{layer} bit {bit} was removed, yet shows {cell}"
    assert set(bits.layer) <= set(heat.y)


@pytest.fixture(scope="module")
def weights(tiny_run):
    return analysis.layer_weights(load_run(tiny_run))


def test_quick_is_one_environment_switch(monkeypatch):
    for value, expected in (("1", True), ("yes", True), ("", False), ("0", False), ("false", False)):
        monkeypatch.setenv("BSQ_QUICK", value)
        assert notebook.quick() is expected
    monkeypatch.delenv("BSQ_QUICK")
    assert notebook.quick() is False


def test_runs_root_is_bsq_runs_else_the_checkouts_data_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("BSQ_RUNS", str(tmp_path))
    assert paths.runs_root() == tmp_path
    monkeypatch.delenv("BSQ_RUNS")
    monkeypatch.chdir(tmp_path)  # a notebook runs in notebooks/; the default must not depend on that
    assert paths.runs_root() == paths.REPO / "data" / "runs"
    assert paths.runs_root(tmp_path / "given") == tmp_path / "given"
    monkeypatch.setenv("BSQ_RUNS", str(paths.EXAMPLES))
    with pytest.raises(ValueError, match="shipped examples"):
        paths.runs_root()
    assert paths.runs_root(paths.EXAMPLES) == paths.EXAMPLES, "an explicit root may be (make examples writes it)"


def test_layer_weights_float_and_quantized(tiny_run, tmp_path):
    state = torch.load(tiny_run / "float.pt", weights_only=True)
    weights = analysis.layer_weights(load_run(tiny_run))
    assert list(weights) == ["fc1", "fc2", "fc3"]
    for name, w in weights.items():
        assert torch.equal(w, state[f"{name}.weight"])
    # no float.pt: scale q / (2^n - 1), by hand
    q = torch.tensor([[3, -1], [0, 2]], dtype=torch.int8)
    torch.save(dict(format=1, state={}, layers={"a": dict(kind="linear", nbits=2, scale=1.5, lsb_offset=0, q=q),
                                                 "b": dict(kind="linear", nbits=0, scale=0.0, lsb_offset=0, q=q * 0)}),
               tmp_path / "model.pt")
    weights = analysis.layer_weights(Run(tmp_path, {}, *[pd.DataFrame()] * 3))
    assert weights["a"].tolist() == [[1.5, -0.5], [0.0, 1.0]] and not weights["b"].any()


def test_planes_figure_for_every_layer_and_nbits(weights):
    for layer, w in weights.items():
        for nbits in (1, 4, 8):
            fig = plots.bit_planes_image(weights[layer], nbits, max_side=16, name=layer)
            assert len(fig.data) == nbits + 1 and fig.layout.title.text.startswith(f"{layer} ")
            corner = w[:16, :16]
            assert torch.allclose(torch.tensor(fig.data[-1].z), from_bits(*to_bits(corner, nbits)))
            pos, neg, _ = to_bits(corner, nbits)
            assert torch.equal(torch.tensor(fig.data[0].z), pos[-1] - neg[-1])  # MSB first


def test_error_figure_shrinks_with_bits_and_marks_the_slider(weights):
    w = weights["fc2"]
    errors = lessons.reconstruction_errors(w, 8)
    assert errors.rmse.is_monotonic_decreasing and errors.max_abs_error.is_monotonic_decreasing
    assert (errors.max_abs_error <= errors.bound * (1 + 1e-5)).all()  # rounding is off by half a step at most
    for nbits in NBITS:
        fig = plots.error_curves(w, nbits)
        assert [t.name for t in fig.data] == ["largest error", "RMS error", "bound: half a step"]
        assert list(fig.data[1].y) == pytest.approx(errors.rmse.tolist())
        assert [s.x0 for s in fig.layout.shapes] == [nbits]
    # by hand: w = (1, 0.4); 1 bit keeps {0, 1}: 0.4 -> 0; 2 bits keep thirds: 0.4 -> 1/3
    fig = plots.error_curves(torch.tensor([1.0, 0.4]), 1, max_bits=2)
    assert list(fig.data[0].y) == pytest.approx([0.4, 0.4 - 1 / 3])
    assert fig.layout.annotations[0].text == "1 bit" and plots.error_curves(w, 3).layout.annotations[0].text == "3 bits"
    assert fig.layout.yaxis.dtick == 1 and fig.layout.yaxis.exponentformat == "power"  # 10^-2, not a bare "2"
    assert fig.data[2].line.width == 4 and fig.data[2].line.color == "black"  # the bound shows through the largest error


def test_digit_table_by_hand():
    table = lessons.digit_table(torch.tensor([[3.0, -1.0], [0.0, 2.0]]), 2)
    assert table.q.tolist() == [3, -1, 0, 2]
    assert table.pos.tolist() == ["11", "00", "00", "10"] and table.neg.tolist() == ["00", "01", "00", "00"]
    assert table.twos_complement.tolist() == ["011", "111", "000", "010"]
    assert table.quantized.tolist() == [3.0, -1.0, 0.0, 2.0]


def test_digit_table_digits_rebuild_q_at_every_nbits(weights):
    w = weights["fc1"]
    for nbits in NBITS:
        table = lessons.digit_table(w, nbits, count=20)
        scale = w.abs().max().item()
        for row in table.itertuples():
            assert int(row.pos, 2) - int(row.neg, 2) == row.q and abs(row.q) <= levels(nbits)
            assert "1" not in row.pos or "1" not in row.neg  # a weight's digits sit in one plane only
            assert int(row.twos_complement, 2) == row.q % 2 ** (nbits + 1)
            assert row.quantized == pytest.approx(scale * row.q / levels(nbits), rel=1e-5, abs=1e-7)
            assert abs(row.quantized - row.weight) <= scale / levels(nbits) / 2 * (1 + 1e-5)


def test_plane_occupancy_by_hand():
    table = lessons.plane_occupancy(torch.tensor([3.0, -1.0, 0.0, 2.0]), 2)  # q = 3, -1, 0, 2
    assert table.bit.tolist() == [2, 1, 0]
    assert table.pos.tolist()[1:] == [0.5, 0.25] and table.neg.tolist()[1:] == [0.0, 0.25]
    assert table.sign_magnitude.tolist()[1:] == [0.5, 0.5] and math.isnan(table.sign_magnitude[0])
    assert table.twos_complement.tolist() == [0.25, 0.75, 0.5]  # 011, 111, 000, 010


def test_plane_occupancy_of_a_real_weight(weights):
    w = weights["fc1"]
    negative = (w < 0).float().mean().item()
    for nbits in NBITS:
        table = lessons.plane_occupancy(w, nbits)
        pos, neg, _ = to_bits(w, nbits)
        planes = table.iloc[1:]
        assert planes.bit.tolist() == list(range(nbits - 1, -1, -1))
        assert planes.pos.tolist() == pytest.approx([pos[b].mean().item() for b in planes.bit])
        assert planes.sign_magnitude.tolist() == pytest.approx((planes.pos + planes.neg).tolist())
        # every weight with q < 0 sets the sign bit of two's complement, and its top planes with it
        assert table.twos_complement[0] == pytest.approx((neg.sum(0) > 0).float().mean().item())
        if nbits >= 4:  # about half the weights, while few weights reach BSQ's MSB (the Lasso can then remove it)
            assert table.twos_complement[0] == pytest.approx(negative, abs=0.05)
            assert table.sign_magnitude[1] < 0.3 < table.twos_complement[1]


def test_live_heatmap_and_curves_follow_every_training_event(tmp_path):
    heat_widget, heat_cb = notebook.live_heatmap()
    norm_widget, norm_cb = notebook.live_heatmap("norm")
    curves, curves_cb = notebook.live_curves()
    seen = []

    def check(event):
        heat = heat_widget.data[0]
        if event.bits is None:
            assert event.stage == "pretrain" and "pretrain" in heat_widget.layout.title.text and not heat.z
        else:
            assert_heatmap_shows(heat, event.bits)
            assert_heatmap_shows(norm_widget.data[0], event.bits, "norm")
            assert heat_widget.layout.title.text == f"bit planes, {event.stage} {event.epoch}"
            assert heat_widget.layout.yaxis.autorange == "reversed" and heat.zmax == 1
        assert curves.data[0].x[-1] == event.step and curves.data[0].y[-1] == event.metrics["test_acc"]
        seen.append(event.stage)

    path = train(preset("digits-mlp", **TINY), runs=tmp_path, name="live",
                 callbacks=[heat_cb, norm_cb, curves_cb, check])
    assert seen == ["pretrain"] * 3 + ["bsq"] * 5 + ["finetune"] * 2
    metrics = load_run(path).metrics
    assert list(curves.data[0].x) == metrics.step.tolist()
    assert list(curves.data[1].y) == pytest.approx(metrics.avg_bits.tolist())
    assert heat_widget.layout.plot_bgcolor == plots.REMOVED
    last = heat_widget.data[0].z
    heat_cb(Event("bsq", 9, 99, 10, 10, {}, pd.DataFrame(columns=FRAME_COLUMNS["bits"]), None, None))  # all collapsed
    assert heat_widget.layout.title.text == "bit planes: bsq 9 (no plane left)" and heat_widget.data[0].z == last


@pytest.fixture(scope="module")
def sweep_runs():
    return catalog.load_sweep(paths.EXAMPLES, "digits")


def test_sweep_runs_are_the_finished_bsq_runs(sweep_runs):
    table = sweep_table(list_runs(paths.EXAMPLES), "digits")
    bsq_rows = table[table.kind == "bsq"]
    assert list(sweep_runs) == sorted(bsq_rows.alpha.tolist())
    assert [r.name for r in sweep_runs.values()] == bsq_rows.sort_values("alpha").name.tolist()


def test_alpha_heatmap_for_every_alpha(sweep_runs):
    for alpha, run in sweep_runs.items():  # the alpha picker's whole range
        fig = plots.run_heatmap(sweep_runs[alpha])
        last = run.bits[run.bits.step == run.bits.step.max()]
        assert_heatmap_shows(fig.data[0], last)
        assert run.name in fig.layout.title.text and f"alpha {alpha:g}:" in fig.layout.title.text


def test_run_caption(sweep_runs):
    s = sweep_runs[0.3].info["summary"]
    assert caption(sweep_runs[0.3]) == \
        f"alpha 0.3: {100 * s['test_acc']:.1f} % test accuracy, {s['avg_bits']:.2f} bits ({s['compression']:.1f}x)"
    empty = Run(None, dict(config=dict(alpha=2.0, bsq_epochs=1), status="finished",
                           summary=dict(test_acc=0.1, avg_bits=0.0, compression=math.inf)), *[pd.DataFrame()] * 3)
    assert caption(empty) == "alpha 2: 10.0 % test accuracy, collapsed: no weight left"
    running = Run(None, dict(config=dict(alpha=0.1, bsq_epochs=1), status="running", summary={}), *[pd.DataFrame()] * 3)
    assert caption(running) == "alpha 0.1: running"


def test_epoch_slider_heatmap_at_every_step():
    run = load_run(paths.EXAMPLES / "digits-a0.3")
    steps, labels = axes.logged_steps(run.bits)
    for step, label in zip(steps, labels):  # notebook 04's epoch slider calls plots.bit_heatmap(bits, step, value)
        for value in ("density", "norm"):
            fig = plots.bit_heatmap(run.bits, step, value)
            assert_heatmap_shows(fig.data[0], run.bits[run.bits.step == step], value, run.bits)
            assert fig.layout.title.text == f"bit planes, {label}"


def test_load_model_export_and_size_table():
    run = load_run(paths.EXAMPLES / "digits-a0.3")
    ds = data.load_for(run.config)
    model = export.load_model(run, ds)
    assert evaluate(model, ds.test_x, ds.test_y) == pytest.approx(run.info["summary"]["test_acc"])
    exported = export.export(model)
    shipped = torch.load(run.path / "model.pt", weights_only=True)
    for name, spec in shipped["layers"].items():
        assert torch.equal(exported["layers"][name]["q"], spec["q"])
    table = analysis.size_table(exported)
    final = run.final_layers().set_index("layer")
    layers = table[table.layer != "total"].set_index("layer")
    assert layers.nbits.tolist() == final.nbits.tolist() and layers.numel.tolist() == final.numel.tolist()
    assert (layers.packed_bytes == layers.numel * layers.nbits / 8).all()
    assert (layers.float32_bytes == 4 * layers.numel).all() and (layers.stored_bytes == layers.numel).all()  # int8
    total = table.set_index("layer").loc["total"]
    size = analysis.export_size(exported)
    assert total.packed_bytes == size["packed_bytes"] and total.nbits == pytest.approx(size["avg_bits"])
    assert total.float32_bytes / total.packed_bytes == pytest.approx(size["compression"])


def test_synthetic_image_folder_loads_as_a_dataset(tmp_path):
    root = data.synthetic_image_folder(tmp_path / "fake", classes=4, train_per_class=5, test_per_class=3)
    ds = load(f"folder:{root}")
    assert ds.shape == (3, 32, 32) and len(ds.classes) == 4 and ds.augment
    assert ds.train_y.bincount().tolist() == [5] * 4 and ds.test_y.bincount().tolist() == [3] * 4


def test_cifar10_source_uses_the_shared_folder_or_says_it_stands_in(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SHARED_CIFAR10", tmp_path / "absent")
    dataset, note = data.cifar10_source(tmp_path / "fake")
    assert dataset == f"folder:{tmp_path / 'fake'}" and "does not exist" in note and "synthetic" in note
    assert len(load(dataset).classes) == 10
    dataset, _ = data.cifar10_source()  # a fresh temporary folder by default
    assert "bsq-synthetic-cifar10-" in dataset and len(load(dataset).classes) == 10
    shared = tmp_path / "cifar"
    for part in ("train", "test"):
        (shared / part).mkdir(parents=True)
    monkeypatch.setattr(data, "SHARED_CIFAR10", shared)
    assert data.cifar10_source(tmp_path / "unused") == (f"folder:{shared}", f"Using the CIFAR-10 image folder {shared}.")
    assert not (tmp_path / "unused").exists()


def test_paper_comparison(tiny_run):
    run = load_run(tiny_run)
    table = analysis.paper_comparison(run).set_index("source")
    paper, mine = table.iloc[0], table.loc[run.name]
    assert (paper.compression, paper.test_acc, paper.alpha, paper.act_bits) == (14.0, 0.92, 5e-3, 4)
    assert mine.compression == run.info["summary"]["compression"] and mine.test_acc == run.info["summary"]["test_acc"]
    assert mine.epochs == "3+4+2" and mine.alpha == TINY["alpha"]


def test_shipped_sweeps_lists_each_sweep_with_its_float_model():
    listed = catalog.list_sweeps(paths.EXAMPLES).set_index("sweep")
    float_run = load_run(paths.EXAMPLES / "digits-float")
    assert listed.loc["digits", "model"] == "mlp" and listed.loc["digits", "dataset"] == "digits"
    assert listed.loc["digits", "float_acc"] == float_run.info["summary"]["test_acc"]
    assert listed.loc["digits", "runs"] == len(list(paths.EXAMPLES.glob("digits-*")))
