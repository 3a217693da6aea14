"""Atomic writes: readers never see a torn frame; a failed write, a full disk or an unwritable root lose nothing."""
import errno
import os
import select
import subprocess
import sys

import pandas as pd
import pytest

import bsq_explore.store as store
from bsq_explore.cli import main
from bsq_explore.runs import DamagedRun, load_run
from bsq_explore.store import write_atomic, write_frame

from conftest import TINY, assert_prefix, copy_run, last_line, one_line, options

# ---- no torn reads ---------------------------------------------------------------------------------

# Runs the CLI in a child that, after writing each epoch's frames, says so on stdout and waits for a
# line on stdin: the reader can then load once while the writer is paused at every epoch.
PAUSE_AFTER_EACH_EPOCH = """
import sys
import bsq_explore.train as train
from bsq_explore.cli import main
run_epoch = train.run_epoch
def paused(*args):
    done = run_epoch(*args)
    print("#paused", flush=True)
    sys.stdin.readline()
    return done
train.run_epoch = paused
sys.exit(main(sys.argv[1:]))
"""


def test_a_reader_looping_over_a_run_being_written_never_sees_a_torn_frame(tmp_path):
    folder = tmp_path / "w"
    writer = subprocess.Popen([sys.executable, "-c", PAUSE_AFTER_EACH_EPOCH, "train", *options(TINY), "--name", "w",
                               "--runs", str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, bufsize=0)
    seen, paused = [], False
    try:
        while True:
            try:
                seen.append(load_run(folder))
            except DamagedRun as err:  # only before run.json is first written
                assert not seen and ("not a run folder" in str(err) or "run.json is missing" in str(err)), err
            if paused:  # that load began while the writer was paused after an epoch: let it go on
                writer.stdin.write(b"\n")
                paused = False
            if select.select([writer.stdout], [], [], 0)[0]:
                chunk = os.read(writer.stdout.fileno(), 4096)
                if not chunk:
                    break  # the writer has exited
                paused = b"#paused" in chunk  # one small write: a pipe delivers it whole
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == 0
    final = load_run(folder)
    assert final.info["status"] == "finished"
    lengths = [len(run.metrics) for run in seen]
    assert set(range(1, len(final.metrics) + 1)) <= set(lengths), "a load at every epoch, while the writer paused"
    for kind in ("metrics", "bits", "layers"):
        sizes = [len(getattr(run, kind)) for run in seen]
        assert sizes == sorted(sizes), f"{kind} never shrinks"
        whole = getattr(final, kind)
        for run in seen:
            part = getattr(run, kind)
            assert list(part.columns) == list(whole.columns)
            assert part.empty or part.equals(whole.iloc[:len(part)]), f"{kind} is a prefix of the final frame"


def test_a_reader_holding_a_frame_open_does_not_block_the_writer(tmp_path):
    path = tmp_path / "metrics.parquet"
    old, new = pd.DataFrame({"a": [1, 2]}), pd.DataFrame({"a": [1, 2, 3]})
    write_frame(path, old)
    with open(path, "rb") as held:
        write_frame(path, new)  # replaces the name; the reader keeps the old, complete file
        pd.testing.assert_frame_equal(pd.read_parquet(held), old)
    pd.testing.assert_frame_equal(pd.read_parquet(path), new)


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "f"
    write_atomic(path, b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        write_atomic(path, b"new" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["f"] and path.read_bytes() == b"old"


# ---- full disk, unwritable runs root ---------------------------------------------------------------

def no_space(*args):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_runs_root_under_a_file_is_a_one_line_error_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["train", *options(TINY), "--runs", str(tmp_path / "file" / "sub")]) == 2
    assert "cannot write to runs root" in one_line(capsys.readouterr().err)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_a_full_runs_root_is_a_one_line_error_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(store.os, "fsync", no_space)  # the probe file cannot be flushed
    assert main(["train", *options(TINY), "--name", "f", "--runs", str(tmp_path / "root")]) == 2
    assert "cannot write to runs root" in one_line(capsys.readouterr().err)
    assert list((tmp_path / "root").iterdir()) == []


def test_a_run_json_that_cannot_be_written_leaves_no_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(store, "write_atomic", no_space)
    assert main(["train", *options(TINY), "--name", "f", "--runs", str(tmp_path)]) == 2
    assert "No space left on device" in one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("what_fails", ["frames", "everything"])
def test_a_disk_that_fills_mid_run_keeps_the_earlier_epochs(tmp_path, tiny_run, monkeypatch, capsys, what_fails):
    real, metrics_writes = store.write_atomic, []

    def filling(path, data):  # full once BSQ epoch 2's metrics are on disk (the 6th metrics write)
        if len(metrics_writes) >= 6 and (what_fails == "everything" or path.name != "run.json"):
            no_space()
        real(path, data)
        if path.name == "metrics.parquet":
            metrics_writes.append(path)

    monkeypatch.setattr(store, "write_atomic", filling)
    assert main(["train", *options(TINY), "--name", "f", "--runs", str(tmp_path)]) == 1
    assert "failed: OSError: [Errno 28] No space left on device" in last_line(capsys.readouterr().err)
    run = load_run(tmp_path / "f")
    assert len(run.metrics) == 6
    for kind in ("metrics", "bits", "layers"):
        assert_prefix(getattr(run, kind), getattr(load_run(tiny_run), kind))
    if what_fails == "frames":
        assert run.info["status"] == "failed" and "No space left on device" in run.info["error"]
    else:  # run.json could not take the failure either: it stays running, stale once this process ends
        assert run.info["status"] == "running" and run.info["provenance"]["pid"] == os.getpid()


def test_a_frame_that_decodes_to_millions_of_rows_is_damaged_before_it_is_decoded(tmp_path, tiny_run):
    """A decompression bomb: a few hundred KB of zstd that would decode to 5 million rows (about 2 GB)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bsq_explore.catalog import list_runs

    folder = copy_run(tiny_run, tmp_path, "bomb")
    metrics = load_run(folder).metrics
    row = metrics.iloc[[0]]
    table = pa.Table.from_pandas(row.loc[row.index.repeat(1_000_000)].reset_index(drop=True), preserve_index=False)
    with pq.ParquetWriter(folder / "metrics.parquet", table.schema, compression="zstd") as writer:
        for _ in range(5):
            writer.write_table(table, row_group_size=1_000_000)
    assert (folder / "metrics.parquet").stat().st_size < 2_000_000
    with pytest.raises(DamagedRun, match="5,000,000 rows in 5 row groups, more than a run writes"):
        load_run(folder)
    row = list_runs(tmp_path).iloc[0]
    assert row.status == "damaged" and "more than a run writes" in row.reason
