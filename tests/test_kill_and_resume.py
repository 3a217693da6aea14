"""Kills and stops: SIGKILL, SIGTERM, stale and zombie runs, stop, resume and checkpoints it refuses."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

import bsq_explore.jobs as jobs
from bsq_explore.catalog import list_runs
from bsq_explore.cli import main
from bsq_explore.config import preset
from bsq_explore.jobs import is_stale
from bsq_explore.runs import DamagedRun, load_run
from bsq_explore.train import resume, train

from conftest import TINY, assert_prefix, comparable, copy_run, last_line, one_line, options

KILL = dict(TINY, bsq_epochs=8)  # long enough in BSQ to be killed in the middle of it


def set_info(folder: Path, **changes) -> None:
    info = json.loads((folder / "run.json").read_text())
    for key, value in changes.items():
        if key in ("pid", "host", "started"):
            info["provenance"][key] = value
        else:
            info[key] = value
    (folder / "run.json").write_text(json.dumps(info))


# Runs the CLI in a child that, if no SIGKILL came sooner, stops for good after BSQ epoch 5: the
# kill lands anywhere from BSQ epoch 2 on (mid-epoch, mid-write), yet the child can never finish first.
HOLD_AFTER_BSQ_5 = """
import sys, threading
import bsq_explore.train as train
from bsq_explore.cli import main
run_epoch = train.run_epoch
def held(run, e):
    done = run_epoch(run, e)
    if (e.stage, e.epoch) == ("bsq", 5):
        threading.Event().wait()
    return done
train.run_epoch = held
sys.exit(main(sys.argv[1:]))
"""


def bsq_epochs_on_disk(folder: Path) -> int:
    try:
        metrics = load_run(folder).metrics
    except DamagedRun as err:  # only while the folder or its run.json is not there yet
        assert "not a run folder" in str(err) or "run.json is missing" in str(err), err
        return -1
    return metrics[metrics.stage == "bsq"].epoch.max() if (metrics.stage == "bsq").any() else -1


def test_sigkill_in_bsq_keeps_every_finished_epoch_and_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    cut_root, ref_root = tmp_path / "cut", tmp_path / "ref"
    args = ["train", *options(KILL), "--name", "x"]
    victim = subprocess.Popen([sys.executable, "-c", HOLD_AFTER_BSQ_5, *args, "--runs", str(cut_root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while bsq_epochs_on_disk(cut_root / "x") < 2:  # read with load_run: no torn read either
            assert victim.poll() is None, victim.stderr.read()
            time.sleep(0.005)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait() == -signal.SIGKILL
    finally:
        victim.kill()
        victim.wait()
    # the uninterrupted reference, in this process: the run's threads come from its config, so a
    # process of its own would give the same frames
    ref = load_run(train(preset("digits-mlp", **KILL), runs=ref_root, name="x"))

    cut = load_run(cut_root / "x")
    assert cut.info["status"] == "running" and is_stale(cut.info)
    assert cut.metrics.stage.iloc[-1] == "bsq" and 2 <= cut.metrics.epoch.iloc[-1] <= 5
    for kind in ("metrics", "bits", "layers"):
        assert_prefix(getattr(cut, kind), getattr(ref, kind))
    row = list_runs(cut_root).set_index("name").loc["x"]
    assert row.status == "running (stale)" and str(victim.pid) in row.reason
    assert main(["ls", str(cut_root)]) == 0 and "running (stale)" in capsys.readouterr().out
    assert main(["show", str(cut_root / "x")]) == 0 and "running (stale" in capsys.readouterr().out

    resumed = subprocess.run([sys.executable, "-m", "bsq_explore.cli", "train", "--resume", "--name", "x",
                              "--runs", str(cut_root)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    run = load_run(cut_root / "x")
    assert run.info["status"] == "finished" and not is_stale(run.info)
    for kind in ("metrics", "bits", "layers"):
        pd.testing.assert_frame_equal(comparable(getattr(run, kind)), comparable(getattr(ref, kind)))
    assert run.info["summary"] == ref.info["summary"]
    ours, theirs = (torch.load(r / "x" / "model.pt", weights_only=True) for r in (cut_root, ref_root))
    for name, spec in theirs["layers"].items():
        assert torch.equal(ours["layers"][name]["q"], spec["q"]) and ours["layers"][name]["nbits"] == spec["nbits"]
    assert not list((cut_root / "x").glob(".*.tmp")), "resume clears half-written files of the killed process"


def test_a_zombie_or_vanished_process_makes_a_running_run_stale_and_a_live_one_is_not(tmp_path, tiny_run):
    folder = copy_run(tiny_run, tmp_path, "z")
    live = subprocess.Popen(["cat"], stdin=subprocess.PIPE)  # alive until its stdin closes
    try:
        set_info(folder, status="running", pid=live.pid, host=socket.gethostname(), started=started(live.pid))
        assert not is_stale(load_run(folder).info) and list_runs(tmp_path).status.tolist() == ["running"]
        with pytest.raises(FileExistsError, match="still running"):
            resume(folder)
        with pytest.raises(FileExistsError, match="still running"):
            train(preset("digits-mlp", **TINY), runs=tmp_path, name="z", overwrite=True)
    finally:
        live.stdin.close()
    if sys.platform == "linux":  # /proc tells a zombie apart
        os.waitid(os.P_PID, live.pid, os.WEXITED | os.WNOWAIT)  # it has exited but is not reaped: a zombie
        assert is_stale(load_run(folder).info)
    live.wait()
    assert is_stale(load_run(folder).info) and list_runs(tmp_path).status.tolist() == ["running (stale)"]
    set_info(folder, host="another-host")
    assert not is_stale(load_run(folder).info), "a process on another host cannot be checked"

    set_info(folder, host=socket.gethostname())
    resume(folder)
    run = load_run(folder)
    assert run.info["status"] == "finished"
    pd.testing.assert_frame_equal(run.metrics, load_run(tiny_run).metrics)


def started(pid: int) -> float:
    return psutil.Process(pid).create_time()


def test_a_pid_reused_by_another_process_does_not_keep_a_dead_run_alive(tmp_path, tiny_run):
    folder = copy_run(tiny_run, tmp_path, "r")
    other = subprocess.Popen(["sleep", "30"])  # alive, with the pid the dead writer once had
    try:
        set_info(folder, status="running", pid=other.pid, host=socket.gethostname(), started=started(other.pid) - 60)
        assert is_stale(load_run(folder).info) and list_runs(tmp_path).status.tolist() == ["running (stale)"]
        with pytest.raises(ValueError, match="not running on this host"):
            jobs.stop(folder)  # and the other process is never signalled
        set_info(folder, started=started(other.pid))  # the same start time: it is the writer
        assert not is_stale(load_run(folder).info)
    finally:
        other.kill()
        other.wait()


def test_sigterm_during_float_pretraining_stops_the_run_and_resume_finishes_it(tmp_path, capsys):
    # 200 float epochs of digits: long enough that a loaded machine cannot finish them before the signal
    args = ["train", *options(dict(TINY, pretrain_epochs=200)), "--name", "t", "--runs", str(tmp_path)]
    child = subprocess.Popen([sys.executable, "-m", "bsq_explore.cli", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(400):  # until its first float epoch is on disk
            if (tmp_path / "t" / "checkpoint.pt").exists():
                break
            time.sleep(0.05)
        jobs.stop(tmp_path / "t")  # what the app's stop button does: SIGTERM to the run's process
        code, err = child.wait(timeout=60), child.stderr.read()
    finally:
        child.kill()
    assert code == 130 and "stopped" in last_line(err)
    run = load_run(tmp_path / "t")  # in float pretraining: no bit frames yet, and not damaged for it
    assert run.info["status"] == "stopped" and len(run.metrics) >= 1 and run.bits.empty
    assert list_runs(tmp_path).status.tolist() == ["stopped"]
    with pytest.raises(ValueError, match="not running"):
        jobs.stop(tmp_path / "t")
    assert main(["train", "--resume", "--name", "t", "--runs", str(tmp_path), "--pretrain-epochs", "2"]) == 2
    assert main(["train", "--resume", "--name", "t", "--runs", str(tmp_path)]) == 0  # its own config
    run = load_run(tmp_path / "t")
    assert run.info["status"] == "finished" and run.metrics.stage.tolist().count("pretrain") == 200


@pytest.mark.parametrize("command", [["sleep", "30"],  # any process
                                     # a process whose command line names the kit (the app server, say)
                                     [sys.executable, "-c", "import time; time.sleep(30)", "bsq_explore", "-m",
                                      "bsq_explore.cli", "train", "--name", "forged"]], ids=["other", "kit-named"])
def test_stop_signals_only_the_process_holding_the_runs_lock(tmp_path, tiny_run, command):
    folder = copy_run(tiny_run, tmp_path, "forged")
    other = subprocess.Popen(command)
    try:
        set_info(folder, status="running", pid=other.pid, host=socket.gethostname(), started=started(other.pid))
        (tmp_path / ".forged.lock").write_text(f"process {other.pid} on host {socket.gethostname()}")
        with pytest.raises(ValueError, match="does not hold run forged's lock"):
            jobs.stop(folder)
        assert other.poll() is None, "the other process lives"
    finally:
        other.kill()
        other.wait()


# ---- damaged checkpoints ------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a zip", "pickle"], ids=["empty", "not a zip", "pickle"])
def test_a_damaged_or_unsafe_checkpoint_refuses_to_resume_and_runs_no_code(tmp_path, tiny_run, capsys, content):
    folder = copy_run(tiny_run, tmp_path, "c")
    set_info(folder, status="failed")
    marker = tmp_path / "pwned"
    if content == "pickle":
        torch.save({"config": Evil(marker)}, folder / "checkpoint.pt")
    else:
        (folder / "checkpoint.pt").write_bytes(content)
    assert main(["train", "--resume", "--name", "c", "--runs", str(tmp_path)]) == 2
    assert "checkpoint.pt is unreadable" in one_line(capsys.readouterr().err)
    assert not marker.exists() and load_run(folder).info["status"] == "failed"

    set_info(folder, status="finished")  # a finished run whose model.pt is damaged the same way
    (folder / "model.pt").write_bytes((folder / "checkpoint.pt").read_bytes())
    assert main(["export", str(folder), "--out", str(tmp_path / "q.pt")]) == 2
    assert "model.pt is unreadable" in one_line(capsys.readouterr().err)
    assert not marker.exists() and not (tmp_path / "q.pt").exists()


class Evil:
    """Unpickling this would create a folder: weights_only loading must refuse to build it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


# The CLI in a child that prints "held" and waits for good after the first epoch of one stage, so
# that a signal lands in that stage, with that epoch on disk.
HOLD_IN_STAGE = """
import sys, threading
import bsq_explore.train as train
from bsq_explore.cli import main
stage, run_epoch = sys.argv.pop(1), train.run_epoch
def held(run, e):
    done = run_epoch(run, e)
    if e.stage == stage:
        print("held", flush=True)
        threading.Event().wait()
    return done
train.run_epoch = held
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("stage", ["pretrain", "bsq", "finetune"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["INT", "TERM", "KILL"])
def test_a_signal_in_any_stage_keeps_the_run_and_resume_matches_an_uninterrupted_run(tmp_path, tiny_run, stage, sig):
    child = subprocess.Popen([sys.executable, "-c", HOLD_IN_STAGE, stage, "train", *options(TINY), "--name", "tiny",
                              "--runs", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "held\n", child.stderr.read()
        child.send_signal(sig)
        code = child.wait(timeout=60)
    finally:
        child.kill()
        child.wait()
    status = list_runs(tmp_path).status.item()
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL and status == "running (stale)"
    else:
        assert code == 130 and status == "stopped" and "Traceback" not in child.stderr.read()
    assert load_run(tmp_path / "tiny").metrics.stage.iloc[-1] == stage  # the held epoch is on disk

    resume(tmp_path / "tiny")  # in this process: the run's threads come from its config
    run, ref = load_run(tmp_path / "tiny"), load_run(tiny_run)
    assert run.info["status"] == "finished" and run.info["summary"] == ref.info["summary"]
    for kind in ("metrics", "bits", "layers"):
        pd.testing.assert_frame_equal(comparable(getattr(run, kind)), comparable(getattr(ref, kind)))


def test_resume_refuses_a_finished_run_and_keeps_it_whole(tmp_path, tiny_run, capsys):
    folder = copy_run(tiny_run, tmp_path, "done")
    (folder / "checkpoint.pt").unlink()  # as make examples leaves a shipped run
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["train", "--resume", "--name", "done", "--runs", str(tmp_path)]) == 2
    assert "has finished: there is nothing to resume" in one_line(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
