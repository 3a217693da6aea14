"""The TensorBoard callback, read back with TensorBoard's own event reader."""
import io

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bsq_explore.board import CELL, heatmap_image
from bsq_explore.cli import main
from bsq_explore.plots import REMOVED
from bsq_explore.runs import load_run

from conftest import TINY, options


def test_tensorboard_events_hold_every_epochs_metrics_bits_and_heatmap(tmp_path):
    assert main(["train", *options(TINY), "--tensorboard", str(tmp_path / "tb"), "--name", "t",
                 "--runs", str(tmp_path / "runs")]) == 0
    run = load_run(tmp_path / "runs" / "t")
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0}).Reload()

    acc = events.Scalars("metrics/test_acc")
    assert [e.step for e in acc] == run.metrics.step.tolist()
    assert [e.value for e in acc] == [np.float32(v) for v in run.metrics.test_acc]
    for layer, rows in run.layers.groupby("layer"):
        assert [(e.step, e.value) for e in events.Scalars(f"bits/{layer}")] == list(zip(rows.step, rows.nbits))
    images = events.Images("bit planes")
    assert [e.step for e in images] == sorted(run.bits.step.unique())
    last = np.array(Image.open(io.BytesIO(images[-1].encoded_image_string)).convert("RGB"))
    assert np.array_equal(last, heatmap_image(run.bits[run.bits.step == run.bits.step.max()]))


def test_the_heatmap_image_is_a_cell_per_plane_grey_where_removed(tiny_run):
    bits = load_run(tiny_run).bits
    last = bits[bits.step == bits.step.max()]
    image = heatmap_image(last)
    layers, columns = last.layer.nunique(), last.bit.max() - last.bit.min() + 1
    assert image.shape == (CELL * layers, CELL * columns, 3)
    grey = [int(REMOVED[i:i + 2], 16) for i in (1, 3, 5)]
    fc1 = last[last.layer == "fc1"]
    for column, bit in enumerate(range(int(last.bit.max()), int(last.bit.min()) - 1, -1)):
        removed = bit not in set(fc1.bit)
        assert (image[CELL // 2, CELL * column + CELL // 2].tolist() == grey) == removed, bit


def test_a_disk_that_fills_under_tensorboard_fails_the_run_in_one_line(tmp_path, monkeypatch, capfd):
    """The events writer fails in its own thread: the run is failed (exit 1, its reason in one line,
    its finished epochs kept), with no thread traceback and no second error from closing the writer."""
    import errno

    from tensorboard.summary.writer import record_writer

    real, writes = record_writer.RecordWriter.write, []

    def filling(self, data):
        writes.append(data)
        if len(writes) > 20:  # a few epochs in
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, data)
    monkeypatch.setattr(record_writer.RecordWriter, "write", filling)
    code = main(["train", *options(TINY), "--tensorboard", str(tmp_path / "tb"), "--name", "t",
                 "--runs", str(tmp_path / "runs")])
    err = capfd.readouterr().err
    assert code == 1 and "Traceback" not in err and "Exception in thread" not in err, err
    assert "No space left on device" in [line for line in err.splitlines() if line.startswith("bsq-explore")][-1]
    run = load_run(tmp_path / "runs" / "t")
    assert run.info["status"] == "failed" and len(run.metrics) >= 1
