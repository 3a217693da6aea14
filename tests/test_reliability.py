"""Reliability: runs survive kills, damaged files, full disks and bad input without losing data."""
import argparse
import ast
import dataclasses
import errno
import json
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import hypothesis.strategies as st
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings

import bsq_explore.cli as cli
import bsq_explore.paths as paths
import bsq_explore.runs as runs
import bsq_explore.sweep as sweep_module
import bsq_explore.train as train_module
from bsq_explore.bits import MAX_BITS, from_bits, plane_values, to_bits
from bsq_explore.cli import main
from bsq_explore.config import preset
from bsq_explore.runs import DamagedRun, check_name, is_stale, list_runs, load_run, write_atomic, write_frame
from bsq_explore.train import Diverged, RunFailed, resume, train
from conftest import TINY, copy_run, one_line

ROOT = Path(__file__).resolve().parents[1]
KILL = dict(TINY, bsq_epochs=8)  # long enough in BSQ to be killed in the middle of it


def options(config: dict) -> list[str]:
    return [arg for k, v in config.items() for arg in (f"--{k.replace('_', '-')}", str(v))]


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """Timings differ between two runs of the same seed; everything else must not."""
    return frame.drop(columns="seconds", errors="ignore").reset_index(drop=True)


def assert_prefix(part: pd.DataFrame, whole: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(comparable(part), comparable(whole).iloc[:len(part)], check_dtype=False)


def last_line(err: str) -> str:
    """The error of a run that failed under its progress bar: one line, below the bar."""
    lines = err.strip().splitlines()  # the bar's \r updates split into lines too
    assert [line for line in lines if line.startswith("bsq-explore:")] == lines[-1:], lines[-3:]
    assert "Traceback" not in err
    return lines[-1]


def set_info(folder: Path, **changes) -> None:
    info = json.loads((folder / "run.json").read_text())
    for key, value in changes.items():
        if key in ("pid", "host"):
            info["provenance"][key] = value
        else:
            info[key] = value
    (folder / "run.json").write_text(json.dumps(info))


# ---- kill and resume ------------------------------------------------------------------------------

# Runs the CLI in a child that, if no SIGKILL came sooner, stops for good after BSQ epoch 5: the
# kill lands anywhere from BSQ epoch 2 on (mid-epoch, mid-write), yet the child can never finish first.
HOLD_AFTER_BSQ_5 = """
import sys, threading
import bsq_explore.train as train
from bsq_explore.cli import main
run_epoch = train.run_epoch
def held(model, opt, ds, config, generator, e, folder):
    done = run_epoch(model, opt, ds, config, generator, e, folder)
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
    assert cut.info["status"] == "running" and cut.stale
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
    assert run.info["status"] == "finished" and not run.stale
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
        set_info(folder, status="running", pid=live.pid, host=socket.gethostname())
        assert not load_run(folder).stale and list_runs(tmp_path).status.tolist() == ["running"]
        with pytest.raises(FileExistsError, match="still running"):
            resume(folder)
        with pytest.raises(FileExistsError, match="still running"):
            train(preset("digits-mlp", **TINY), runs=tmp_path, name="z", overwrite=True)
    finally:
        live.stdin.close()
    if sys.platform == "linux":  # /proc tells a zombie apart
        os.waitid(os.P_PID, live.pid, os.WEXITED | os.WNOWAIT)  # it has exited but is not reaped: a zombie
        assert load_run(folder).stale
    live.wait()
    assert load_run(folder).stale and list_runs(tmp_path).status.tolist() == ["running (stale)"]
    set_info(folder, host="another-host")
    assert not is_stale(load_run(folder).info), "a process on another host cannot be checked"

    set_info(folder, host=socket.gethostname())
    resume(folder)
    run = load_run(folder)
    assert run.info["status"] == "finished"
    pd.testing.assert_frame_equal(run.metrics, load_run(tiny_run).metrics)


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

    monkeypatch.setattr(runs.os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        write_atomic(path, b"new" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["f"] and path.read_bytes() == b"old"


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


# ---- failed runs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nan_or_inf_loss_fails_the_run_and_keeps_every_earlier_frame(tmp_path, tiny_run, monkeypatch, bad):
    poisoned = []
    real = train_module.bit_lasso
    monkeypatch.setattr(train_module, "bit_lasso", lambda model: real(model) * (bad if poisoned else 1.0))

    def poison_after_bsq_2(event):
        if (event.stage, event.epoch) == ("bsq", 2):
            poisoned.append(True)

    with pytest.raises(RunFailed, match="became (nan|inf)") as failed:
        train(preset("digits-mlp", **TINY), runs=tmp_path, name="d", callbacks=[poison_after_bsq_2])
    assert isinstance(failed.value.__cause__, Diverged)
    run, reference = load_run(tmp_path / "d"), load_run(tiny_run)
    assert run.info["status"] == "failed" and re.match("Diverged: the .* became (nan|inf)", run.info["error"])
    assert list(zip(run.metrics.stage, run.metrics.epoch))[-1] == ("bsq", 2) and len(run.metrics) == 6
    for kind in ("metrics", "bits", "layers"):
        assert_prefix(getattr(run, kind), getattr(reference, kind))
    assert run.bits.epoch[run.bits.stage == "bsq"].max() == 2
    assert list_runs(tmp_path).set_index("name").loc["d", "reason"] == run.info["error"]


def test_a_huge_learning_rate_diverges_with_exit_1_and_one_line(tmp_path, tiny_run, capsys):
    args = ["train", *options(TINY), "--bsq-lr", "1e30", "--name", "lr", "--runs", str(tmp_path)]
    assert main(args) == 1
    assert "failed: Diverged: the loss became nan" in last_line(capsys.readouterr().err)
    run = load_run(tmp_path / "lr")
    assert run.info["status"] == "failed" and "Diverged" in run.info["error"]
    pretrain = run.metrics[run.metrics.stage == "pretrain"]
    assert len(pretrain) == 3 and run.metrics.stage.tolist()[3:] == ["bsq"]  # the conversion snapshot only
    assert_prefix(pretrain, load_run(tiny_run).metrics)


def test_an_exception_inside_training_fails_the_run_with_exit_1_and_keeps_its_frames(
        tmp_path, tiny_run, monkeypatch, capsys):
    calls = []
    real = train_module.requantize_

    def requantize_(model, max_bits):  # called at BSQ epochs 0, 2 and 4
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("boom in requantization")
        return real(model, max_bits)

    monkeypatch.setattr(train_module, "requantize_", requantize_)
    assert main(["train", *options(TINY), "--name", "e", "--runs", str(tmp_path)]) == 1, \
        "a ValueError once training has begun is a failed run, not bad input"
    assert "failed: ValueError: boom in requantization" in last_line(capsys.readouterr().err)
    run = load_run(tmp_path / "e")
    assert run.info["status"] == "failed" and run.info["error"] == "ValueError: boom in requantization"
    assert list(zip(run.metrics.stage, run.metrics.epoch))[-1] == ("bsq", 1)
    for kind in ("metrics", "bits", "layers"):
        assert_prefix(getattr(run, kind), getattr(load_run(tiny_run), kind))


# ---- safe loading ----------------------------------------------------------------------------------

def test_every_torch_load_in_the_package_and_app_uses_weights_only():
    calls = []
    for path in sorted([*(ROOT / "bsq_explore").rglob("*.py"), *(ROOT / "app").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", safe))
    assert len(calls) >= 3, "the checkpoint, the pretrained model and the export are loaded"
    assert [where for where, safe in calls if not safe] == []


@pytest.mark.parametrize("name", ["x\n", "../x", "/tmp/x", "a/b", "..", "x\x00"])
def test_bad_run_names_are_refused_before_anything_is_written(tmp_path, name):
    with pytest.raises(ValueError, match="bad run name"):
        check_name(name)
    with pytest.raises(ValueError, match="bad run name"):
        train(preset("digits-mlp", **TINY), runs=tmp_path / "root", name=name)
    assert not (tmp_path / "root").exists() and list(tmp_path.iterdir()) == []


# ---- full disk, unwritable runs root ---------------------------------------------------------------

def no_space(*args):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_runs_root_under_a_file_is_a_one_line_error_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["train", *options(TINY), "--runs", str(tmp_path / "file" / "sub")]) == 2
    assert "cannot write to runs root" in one_line(capsys.readouterr().err)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_a_full_runs_root_is_a_one_line_error_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runs.os, "fsync", no_space)  # the probe file cannot be flushed
    assert main(["train", *options(TINY), "--name", "f", "--runs", str(tmp_path / "root")]) == 2
    assert "cannot write to runs root" in one_line(capsys.readouterr().err)
    assert list((tmp_path / "root").iterdir()) == []


def test_a_run_json_that_cannot_be_written_leaves_no_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runs, "write_atomic", no_space)
    assert main(["train", *options(TINY), "--name", "f", "--runs", str(tmp_path)]) == 2
    assert "No space left on device" in one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("what_fails", ["frames", "everything"])
def test_a_disk_that_fills_mid_run_keeps_the_earlier_epochs(tmp_path, tiny_run, monkeypatch, capsys, what_fails):
    real, metrics_writes = runs.write_atomic, []

    def filling(path, data):  # full once BSQ epoch 2's metrics are on disk (the 6th metrics write)
        if len(metrics_writes) >= 6 and (what_fails == "everything" or path.name != "run.json"):
            no_space()
        real(path, data)
        if path.name == "metrics.parquet":
            metrics_writes.append(path)

    monkeypatch.setattr(runs, "write_atomic", filling)
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


# ---- bad input, fuzzed -----------------------------------------------------------------------------

COMMANDS = ["train", "sweep", "ls", "show", "export"]
SUBPARSERS = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
OPTIONS = sorted({o for parser in SUBPARSERS.values() for a in parser._actions for o in a.option_strings})
VALUES = ["0", "1", "-1", "2", "17", "0.5", "1e9", "1e400", "nan", "inf", "-inf", "", " ", "true", "no", "2,3",
          "0,0.1", "1,,2", "a,b", "digits-mlp", "cifar10", "folder:nowhere", "mlp", "cpu", "cuda", "auto",
          "tiny", "x\n", "a/b", "-", "--", "9" * 30, "local", "ray"]
texts = st.text(alphabet=st.characters(blacklist_characters="/\\", blacklist_categories=("Cs",)), max_size=12)
values = st.one_of(st.sampled_from(VALUES), st.integers(0, 40).map(str), texts, st.integers().map(str),
                   st.floats().map(str))


@st.composite
def argvs(draw):
    """Mostly a real command with well-formed option/value pairs (to reach the commands), then loose tokens."""
    command = draw(st.sampled_from(COMMANDS)) if draw(st.integers(0, 9)) else draw(texts)
    own = sorted({o for a in SUBPARSERS[command]._actions for o in a.option_strings} - {"-h", "--help"}) \
        if command in SUBPARSERS else OPTIONS  # help stays among the loose tokens: it would swamp the pairs
    positional = draw(st.lists(values, max_size=2)) if command in ("ls", "show", "export") else []
    pairs = draw(st.lists(st.tuples(st.sampled_from(own), values), max_size=3)) if own else []  # ls has none
    if command == "sweep" and draw(st.booleans()):  # its one required option
        pairs.insert(0, ("--alphas", draw(st.sampled_from(["0.1", "0,0.3", "0.2,nan", "1e400", "", "x"]))))
    loose = draw(st.lists(st.one_of(st.sampled_from(OPTIONS), values), max_size=2))
    return [command, *positional, *(token for pair in pairs for token in pair), *loose]


class FakePool:
    """multiprocessing's Pool, in-process: the fuzzer must not spawn workers."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, tasks, chunksize=1):
        return [fn(task) for task in tasks]


class FakeContext:
    Pool = FakePool


@pytest.fixture
def fuzz_cli(tmp_path, tiny_run, monkeypatch):
    """A sandbox where any argument list is safe: stub training, every path under tmp_path."""
    started = []

    def stub_train(config, runs=None, name=None, sweep=None, callbacks=(), overwrite=False, force=False):
        started.append(config)  # the parser and config validation are what is fuzzed, not training
        return Path(runs or "data/runs") / check_name(name or "stub")

    def stub_resume(path, config=None, callbacks=(), force=False):
        if config is not None:
            started.append(config)
        return Path(path)

    sandbox = tmp_path / "cwd" / "deeper"  # '..' arguments stay inside tmp_path
    sandbox.mkdir(parents=True)
    (tmp_path / "runs").mkdir()
    copy_run(tiny_run, tmp_path / "runs", "tiny")
    monkeypatch.chdir(sandbox)
    monkeypatch.setenv("BSQ_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(paths, "EXAMPLES", tmp_path / "examples")
    monkeypatch.setattr(train_module, "train", stub_train)
    monkeypatch.setattr(train_module, "resume", stub_resume)
    monkeypatch.setattr(sweep_module, "train", stub_train)
    monkeypatch.setattr(sweep_module, "resume", stub_resume)
    monkeypatch.setattr(sweep_module.multiprocessing, "get_context", lambda method: FakeContext)
    monkeypatch.setattr(sweep_module, "run_ray", lambda tasks, *args: [sweep_module._run_one(t) for t in tasks])
    return started


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=argvs())
def test_fuzzed_command_lines_end_in_an_exit_code_and_at_most_one_line(fuzz_cli, capsys, argv):
    started = len(fuzz_cli)
    code = main(argv)
    err = capsys.readouterr().err
    event(f"{argv[0] if argv[0] in COMMANDS else 'no command'}: exit {code}")
    assert isinstance(code, int) and code in (0, 2), (code, err)  # 1 is a failed run; the stubs never fail
    assert len(err.strip().splitlines()) <= 1, err
    if code == 2:
        assert err.startswith("bsq-explore: error: "), err
    for config in fuzz_cli[started:]:  # whatever reached training is a config it can run
        values = [getattr(config, f.name) for f in dataclasses.fields(config)]
        assert all(math.isfinite(v) for v in values if isinstance(v, float)) and config.alpha >= 0, config


def test_the_fuzz_sandbox_reaches_the_commands(fuzz_cli, capsys):
    """The fuzzer's stubs are wired: a valid train and sweep get through to them."""
    assert main(["train", "--bsq-epochs", "3", "--name", "ok"]) == 0
    assert main(["sweep", "--alphas", "0.1,0.2", "--uniform", "3", "--jobs", "2", "--name", "s"]) == 0
    assert [c.bsq_epochs for c in fuzz_cli][:1] == [3] and sorted(c.alpha for c in fuzz_cli[2:4]) == [0.1, 0.2]
    assert main(["sweep", "--alphas", "0.4", "--uniform", "", "--backend", "ray", "--name", "r"]) == 0
    assert fuzz_cli[-1].alpha == 0.4, "the ray backend runs in-process here, never starting Ray"
    assert main(["show", "tiny"]) == 0 and "finished" in capsys.readouterr().out


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.bool]
nbits_values = st.one_of(st.integers(-3, 20), st.floats(-3, 20), st.booleans())
shapes = st.lists(st.integers(0, 4), max_size=3).map(tuple)  # includes 0-d and empty shapes


def weight(shape, dtype, magnitude, special, seed):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * magnitude
    if special is not None and w.numel():
        w.view(-1)[0] = special
    return w.to(dtype)


@settings(max_examples=300, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(DTYPES), nbits=nbits_values, magnitude=st.sampled_from([0, 1e-3, 1, 300]),
       special=st.sampled_from([None, 0.0, float("nan"), float("inf")]), seed=st.integers(0, 2**16))
def test_fuzzed_to_bits_gives_the_uniform_quantization_or_a_one_line_error(shape, dtype, nbits, magnitude, special,
                                                                          seed):
    w = weight(shape, dtype, magnitude, special, seed)
    try:
        pos, neg, scale = to_bits(w, nbits)
    except (ValueError, TypeError) as err:
        assert "\n" not in str(err)
        ok_nbits = not isinstance(nbits, bool) and isinstance(nbits, int) and 1 <= nbits <= MAX_BITS
        ok_weight = w.is_floating_point() and bool(torch.isfinite(w).all())
        assert not (ok_nbits and ok_weight), f"a valid call raised {err!r}"
        return
    assert pos.shape == neg.shape == (nbits, *shape) and pos.dtype == neg.dtype == scale.dtype == dtype
    assert set(pos.unique().tolist()) <= {0, 1} and not (pos * neg).any()
    w64 = w.double()
    s = w64.abs().max().item() if w.numel() else 0.0
    assert scale.item() == s
    q = plane_values(pos.double(), neg.double())  # the integers the planes hold
    if s == 0:
        assert not q.any()
        return
    exact = w64.abs() / s * (2**nbits - 1)  # the oracle in float64: |q| = round(exact), sign of w
    assert torch.equal(torch.sign(q) * torch.sign(w64), torch.sign(q.abs())), "q != 0 carries the sign of w"
    off = (q.abs() - torch.round(exact)).abs()
    near_tie = ((exact - exact.floor()) - 0.5).abs() < 1e-2  # float32 math may round a near-tie the other way
    assert bool((off <= near_tie.double()).all()), "planes hold round(|w| / s * (2^n - 1))"


@settings(max_examples=300, deadline=None)
@given(shape=shapes, n=st.integers(-1, 18), dtype=st.sampled_from(DTYPES), neg_dtype=st.sampled_from(DTYPES),
       scale=st.floats(0, 100), mismatch=st.booleans(), seed=st.integers(0, 2**16))
def test_fuzzed_from_bits_gives_the_effective_weight_or_a_one_line_error(shape, n, dtype, neg_dtype, scale, mismatch,
                                                                        seed):
    generator = torch.Generator().manual_seed(seed)
    plane_shape = (n, *shape) if n >= 0 else shape
    pos = torch.randint(0, 3, plane_shape, generator=generator).to(dtype)  # planes relax into [0, 2]
    neg = torch.randint(0, 3, plane_shape[:-1] + (1,) if mismatch and plane_shape else plane_shape,
                        generator=generator).to(neg_dtype)
    s = torch.tensor(scale, dtype=dtype if dtype.is_floating_point else torch.float32)
    try:
        w = from_bits(pos, neg, s)
    except (ValueError, TypeError) as err:
        assert "\n" not in str(err)
        valid = pos.is_floating_point() and pos.dtype == neg.dtype and pos.shape == neg.shape \
            and pos.dim() > 0 and 1 <= pos.shape[0] <= MAX_BITS
        assert not valid, f"a valid call raised {err!r}"
        return
    nbits, weight_shape = pos.shape[0], pos.shape[1:]  # n < 0 made planes of the shape itself
    levels = 2**nbits - 1
    x = (2.0 ** torch.arange(nbits, dtype=torch.float64)).view(-1, *[1] * len(weight_shape))
    k = torch.round(((x * pos.double()).sum(0) - (x * neg.double()).sum(0)).clamp(-levels, levels))
    expected = s.double() * k / levels  # the effective weight at integer level k, in float64
    assert w.shape == weight_shape and w.dtype == dtype
    info = torch.finfo(dtype)
    subnormal_step = info.smallest_normal * info.eps  # below smallest_normal a dtype rounds to this grid
    torch.testing.assert_close(w.double(), expected, rtol=4 * info.eps, atol=4 * info.eps * scale + subnormal_step)


def test_sigterm_during_float_pretraining_stops_the_run_and_resume_finishes_it(tmp_path, capsys):
    args = ["train", *options(dict(TINY, pretrain_epochs=30)), "--name", "t", "--runs", str(tmp_path)]
    child = subprocess.Popen([sys.executable, "-m", "bsq_explore.cli", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(400):  # until its first float epoch is on disk
            if (tmp_path / "t" / "checkpoint.pt").exists():
                break
            time.sleep(0.05)
        train_module.stop(tmp_path / "t")  # what the app's stop button does: SIGTERM to the run's process
        code, err = child.wait(timeout=60), child.stderr.read()
    finally:
        child.kill()
    assert code == 130 and "stopped" in last_line(err)
    run = load_run(tmp_path / "t")  # in float pretraining: no bit frames yet, and not damaged for it
    assert run.info["status"] == "stopped" and len(run.metrics) >= 1 and run.bits.empty
    assert list_runs(tmp_path).status.tolist() == ["stopped"]
    with pytest.raises(ValueError, match="not running"):
        train_module.stop(tmp_path / "t")
    assert main(["train", "--resume", "--name", "t", "--runs", str(tmp_path), "--pretrain-epochs", "2"]) == 2
    assert main(["train", "--resume", "--name", "t", "--runs", str(tmp_path)]) == 0  # its own config
    run = load_run(tmp_path / "t")
    assert run.info["status"] == "finished" and run.metrics.stage.tolist().count("pretrain") == 30


def test_stop_refuses_a_process_that_is_no_bsq_run(tmp_path, tiny_run):
    folder = copy_run(tiny_run, tmp_path, "forged")
    other = subprocess.Popen(["sleep", "30"])
    try:
        set_info(folder, status="running", pid=other.pid, host=socket.gethostname())
        with pytest.raises(ValueError, match="is not a bsq-explore run"):
            train_module.stop(folder)
        assert other.poll() is None, "the other process lives"
    finally:
        other.kill()
