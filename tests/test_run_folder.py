"""Reading a run folder: one validation for ls, show, load_run and every app page. A damaged folder
is one 'damaged' row with its reason; nothing raises, nothing hangs, the other runs still open."""
import json
import os
import re
import signal
import stat
from contextlib import contextmanager
from pathlib import Path

import hypothesis.strategies as st
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from streamlit.testing.v1 import AppTest
from test_app import MAIN

from bsq_explore.catalog import caption, list_runs
from bsq_explore.cli import main
from bsq_explore.runs import DamagedRun, load_run

from conftest import copy_run, one_line, shown
from test_sweep import EXAMPLES


@contextmanager
def within(seconds: int):
    """Fail, instead of hanging the suite, when the body takes longer (a read blocked on a pipe)."""
    def timeout(*_):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def edit_json(change):
    def damage(folder):
        info = json.loads((folder / "run.json").read_text())
        change(info)
        (folder / "run.json").write_text(json.dumps(info))
    return damage


def edit_frame(name, change):
    def damage(folder):
        path = folder / f"{name}.parquet"
        change(pd.read_parquet(path)).to_parquet(path)
    return damage


def replace(name, make):
    def damage(folder):
        (folder / name).unlink()
        make(folder / name)
    return damage


def nested(depth: int) -> str:
    return '{"config": ' + "[" * depth + "]" * depth + ', "status": "finished"}'


DAMAGES = {
    "truncated metrics": (lambda p: truncate(p / "metrics.parquet"), "metrics.parquet is unreadable"),
    "truncated layers": (lambda p: truncate(p / "layers.parquet"), "layers.parquet is unreadable"),
    "invalid json": (lambda p: (p / "run.json").write_text('{"status": "fin'), "run.json is not valid JSON"),
    "json not an object": (lambda p: (p / "run.json").write_text("[1, 2]"), "run.json lacks its config or status"),
    "deeply nested json": (lambda p: (p / "run.json").write_text(nested(100_000)), "run.json is not valid JSON"),
    "unknown status": (edit_json(lambda i: i.update(status="exploded")), "unknown status 'exploded'"),
    "status a list": (edit_json(lambda i: i.update(status=["finished"])), "unknown status"),
    "bad config": (edit_json(lambda i: i["config"].update(nbits="eight")), "run.json has a bad config"),
    "dataset a number": (edit_json(lambda i: i["config"].update(dataset=5)), "dataset must be a string"),
    "device a number": (edit_json(lambda i: i["config"].update(device=0)), "device must be a string"),
    "unknown config field": (edit_json(lambda i: i["config"].update(colour=1)), "unknown config fields colour"),
    "text accuracy": (edit_json(lambda i: i["summary"].update(test_acc="high")), "run.json has a bad test_acc"),
    "summary a list": (edit_json(lambda i: i.update(summary=[1])), "summary or provenance that is not a mapping"),
    "sweep a number": (edit_json(lambda i: i.update(sweep=3)), "run.json has a bad sweep"),
    "huge pid": (edit_json(lambda i: (i.update(status="running"), i["provenance"].update(pid=2**31))),
                 "run.json has a bad provenance pid"),
    "missing bits": (lambda p: (p / "bits.parquet").unlink(), "bits.parquet is missing"),
    "missing run.json": (lambda p: (p / "run.json").unlink(), "run.json is missing"),
    "run.json a folder": (replace("run.json", Path.mkdir), "run.json is not a regular file"),
    "run.json a pipe": (replace("run.json", os.mkfifo), "run.json is not a regular file"),
    "metrics a pipe": (replace("metrics.parquet", os.mkfifo), "metrics.parquet is not a regular file"),
    "run.json to /dev/zero": (replace("run.json", lambda p: p.symlink_to("/dev/zero")),
                              "run.json is not a regular file"),
    "run.json loops": (replace("run.json", lambda p: p.symlink_to(p)), "run.json cannot be opened"),
    "wrong columns": (edit_frame("metrics", lambda f: f.drop(columns="test_acc")),
                      "metrics.parquet lacks columns test_acc"),
    "nan step": (edit_frame("metrics", lambda f: f.assign(step=f.step.astype(float).where(f.step != 3))),
                 "metrics.parquet has a missing or infinite"),
    "text nbits": (edit_frame("layers", lambda f: f.assign(nbits=f.nbits.astype(str))),
                   "layers.parquet has columns of the wrong type: nbits"),
    "empty metrics": (edit_frame("metrics", lambda f: f.iloc[:0]), "metrics.parquet has no rows"),
}


@pytest.fixture(scope="module")
def damaged_root(tiny_run, tmp_path_factory):
    """A runs root with one folder per damage and two good runs around them."""
    root = tmp_path_factory.mktemp("damaged")
    for name in ("a-good", "z-good"):
        copy_run(tiny_run, root, name)
    for damage, (harm, _) in DAMAGES.items():
        harm(copy_run(tiny_run, root, damage.replace(" ", "-").replace("/", "")))
    (root / "a-loop").symlink_to(root / "a-loop")  # a run folder that is a symlink to itself
    return root


def folder_of(damage: str) -> str:
    return damage.replace(" ", "-").replace("/", "")


def test_ls_lists_each_damaged_folder_with_its_reason_and_the_good_runs_as_finished(damaged_root):
    with within(60):
        table = list_runs(damaged_root).set_index("name")
    assert table.loc[["a-good", "z-good"], "status"].tolist() == ["finished", "finished"]
    assert table.loc["a-loop", "status"] == "damaged" and "symlink" in table.loc["a-loop", "reason"]
    for damage, (_, reason) in DAMAGES.items():
        row = table.loc[folder_of(damage)]
        assert (row.status, reason in row.reason) == ("damaged", True), (damage, row.reason)


@pytest.mark.parametrize("damage", DAMAGES)
def test_load_run_and_show_refuse_a_damaged_run_in_one_line(damaged_root, capsys, damage):
    reason = DAMAGES[damage][1]
    with within(30):
        with pytest.raises(DamagedRun, match=re.escape(reason)):
            load_run(damaged_root / folder_of(damage))
        assert main(["show", folder_of(damage), "--runs", str(damaged_root)]) == 2
    assert reason in one_line(capsys.readouterr().err)


def test_ls_prints_the_damaged_rows_and_the_good_ones(damaged_root, capsys):
    with within(60):
        assert main(["ls", str(damaged_root)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listing if line.split()[1] == "finished"] == ["a-good", "z-good"]
    for damage, (_, reason) in DAMAGES.items():
        line = next(line for line in listing if folder_of(damage) in line)
        assert "damaged" in line and reason[:30] in line, line
    assert not any(" None " in line or line.endswith("None") for line in listing)  # a blank, not "None"


def test_a_truncated_model_is_a_damaged_run_not_torchs_advice(tiny_run, tmp_path):
    folder = copy_run(tiny_run, tmp_path, "r")
    truncate(folder / "model.pt")
    with pytest.raises(DamagedRun, match="model.pt is unreadable") as err:
        load_run(folder).read_model()
    assert "weights_only" not in str(err.value)


def test_every_page_opens_over_a_root_of_damaged_runs(damaged_root, monkeypatch):
    monkeypatch.setenv("BSQ_RUNS", str(damaged_root))
    for page in ("home", "runs", "heatmap", "precision", "sweep", "compare", "whatif", "train", "playground"):
        with within(60):
            at = AppTest.from_file(MAIN, default_timeout=60).switch_page(f"views/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])


def test_a_page_asked_for_a_damaged_run_says_so_and_does_not_open_it(damaged_root, monkeypatch):
    monkeypatch.setenv("BSQ_RUNS", str(damaged_root))
    for damage in ("text accuracy", "metrics a pipe", "nan step"):
        at = AppTest.from_file(MAIN, default_timeout=60)
        at.query_params["run"] = folder_of(damage)
        with within(60):
            at.switch_page("views/heatmap.py").run()  # every page picks its run through one function
        assert not at.exception and at.selectbox[0].value != folder_of(damage)
        assert any(folder_of(damage) in shown(w.value) for w in at.warning)


def test_whatif_shows_a_truncated_model_as_damaged(tiny_run, tmp_path, monkeypatch):
    folder = copy_run(tiny_run, tmp_path, "r")
    truncate(folder / "model.pt")
    monkeypatch.setenv("BSQ_RUNS", str(tmp_path))
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.query_params["run"] = "r"
    at.switch_page("views/whatif.py").run()
    assert not at.exception and "model.pt is unreadable" in shown(at.error[0].value)


@pytest.mark.parametrize("epoch", ["--5", "²", "9" * 5000, "1e3", " 20"])
def test_the_heatmap_page_ignores_an_epoch_in_the_url_that_is_no_step(epoch):
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.query_params.update(run="digits-a0.3", epoch=epoch)
    at.switch_page("views/heatmap.py").run()
    last = load_run(EXAMPLES / "digits-a0.3").bits.step.max()
    assert not at.exception and at.select_slider[0].value == last


def test_run_files_take_the_users_umask_not_0600(tiny_run):
    mask = os.umask(0)
    os.umask(mask)
    for path in Path(tiny_run).iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=6)
FIELDS = ["status", "sweep", "error", "summary", "provenance", "config", "summary.test_acc", "summary.avg_bits",
          "provenance.pid", "provenance.host", "config.alpha", "config.nbits", "config.dataset", "config.model",
          "config.bsq_epochs", "config.pretrain_milestones", "config.device"]


def damaged_copy(tiny_run, root: Path, field: str, value) -> Path:
    """A copy of tiny_run whose run.json has value at field ('config.alpha': a nested key)."""
    folder = copy_run(tiny_run, root, "r")
    info = json.loads((folder / "run.json").read_text())
    *parents, key = field.split(".")
    target = info
    for parent in parents:
        target = target[parent]
    target[key] = value
    (folder / "run.json").write_text(json.dumps(info))
    return folder


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=JSON)
def test_any_value_in_any_run_json_field_lists_as_finished_or_damaged_and_never_raises(
        tiny_run, tmp_path_factory, capsys, field, value):
    root = tmp_path_factory.mktemp("fuzz")
    folder = damaged_copy(tiny_run, root, field, value)

    row = list_runs(root).iloc[0]
    assert row.status in ("finished", "running", "running (stale)", "failed", "stopped", "damaged")
    try:
        run = load_run(folder)
    except DamagedRun as err:
        assert row.status == "damaged" and str(err) == row.reason
    else:
        assert row.status != "damaged"
        caption(run), run.config, run.kind  # everything a page shows of a run
    for command in (["show", "r"], ["export", "r", "--out", str(root / "q.pt")]):
        assert main([*command, "--runs", str(root)]) in (0, 2)
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) <= 1 and "Traceback" not in err, err


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=JSON)
def test_resume_of_any_run_json_finishes_the_run_or_refuses_in_one_line(tiny_run, tmp_path_factory, capsys, field,
                                                                         value):
    root = tmp_path_factory.mktemp("fuzz")
    folder = damaged_copy(tiny_run, root, field, value)
    damaged = list_runs(root).status.iloc[0] == "damaged"
    code = main(["train", "--resume", "--name", "r", "--runs", str(root)])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err, err
    if code == 0:  # its checkpoint holds the config: a run marked unfinished is finished from its last epoch
        assert load_run(folder).info["status"] == "finished"
    else:  # a finished run is never restarted
        assert err.strip().splitlines()[-1].startswith("bsq-explore: error:") and damaged or "running" in err \
            or "has finished: there is nothing to resume" in err


def test_a_run_records_its_image_shape_classes_and_standardization(tiny_run):
    from bsq_explore.data import load

    ds = load("digits")
    assert load_run(tiny_run).info["data"] == dict(shape=[1, 8, 8], classes=ds.classes, mean=ds.mean, std=ds.std)
