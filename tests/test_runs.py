"""Run folders: listing, damage reports, names, sweep tables."""
import json
import shutil

import pytest

from bsq_explore.catalog import list_runs
from bsq_explore.config import preset
from bsq_explore.runs import DamagedRun, load_run
from bsq_explore.store import check_name, write_atomic
from bsq_explore.train import train

from conftest import TINY


def copy_run(tiny_run, root, name):
    shutil.copytree(tiny_run, root / name)
    return root / name


@pytest.mark.parametrize("damage, reason", [
    (lambda p: (p / "bits.parquet").write_bytes((p / "bits.parquet").read_bytes()[:100]), "bits.parquet is unreadable"),
    (lambda p: (p / "run.json").write_text("{not json"), "run.json is not valid JSON"),
    (lambda p: (p / "run.json").unlink(), "run.json is missing"),
    (lambda p: (p / "metrics.parquet").unlink(), "metrics.parquet is missing"),
])
def test_damaged_runs_are_listed_with_the_reason(tmp_path, tiny_run, damage, reason):
    copy_run(tiny_run, tmp_path, "good")
    damage(copy_run(tiny_run, tmp_path, "bad"))
    table = list_runs(tmp_path).set_index("name")
    assert table.loc["good", "status"] == "finished"
    assert table.loc["bad", "status"] == "damaged" and reason in table.loc["bad", "reason"]
    with pytest.raises(DamagedRun, match=reason.split(" is")[0]):
        load_run(tmp_path / "bad")


def test_a_frame_with_wrong_columns_is_damaged(tmp_path, tiny_run):
    import pandas as pd

    bad = copy_run(tiny_run, tmp_path, "bad")
    pd.read_parquet(bad / "layers.parquet").drop(columns="nbits").to_parquet(bad / "layers.parquet")
    with pytest.raises(DamagedRun, match="lacks columns nbits"):
        load_run(bad)


def test_listing_reports_summary(tiny_run):
    row = list_runs(tiny_run.parent).set_index("name").loc["tiny"]
    info = json.loads((tiny_run / "run.json").read_text())
    assert row.kind == "bsq" and row.alpha == info["config"]["alpha"]
    assert row.test_acc == info["summary"]["test_acc"] and row.epochs == 10
    assert row.chance == 1 / len(info["data"]["classes"])  # guessing's accuracy, from the run's data record


def test_chance_is_one_over_the_classes_of_a_runs_data():
    from bsq_explore.catalog import chance_accuracy
    from bsq_explore.data import load_for

    assert chance_accuracy("folder:pets", {"classes": ["cat", "dog", "fish", "bird"]}) == 0.25  # the record's
    assert chance_accuracy("folder:pets", None) is None  # a folder's classes are its record's or unknown
    digits = load_for(preset("digits-mlp"))  # a run from before the record: the kit's datasets have ten classes
    assert chance_accuracy("digits", None) == 1 / len(digits.classes) == 0.1


@pytest.mark.parametrize("bad", ["", "..", "a/b", "/abs", "../up", "a\\b", ".hidden", "x" * 200, "a b"])
def test_bad_run_names(bad):
    with pytest.raises(ValueError, match="bad run name"):
        check_name(bad)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    write_atomic(tmp_path / "f", b"one")
    write_atomic(tmp_path / "f", b"two")
    assert [p.name for p in tmp_path.iterdir()] == ["f"] and (tmp_path / "f").read_bytes() == b"two"


def test_folders_that_hold_no_run_are_not_listed(tmp_path, tiny_run):
    copy_run(tiny_run, tmp_path, "good")
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a run")
    damaged = copy_run(tiny_run, tmp_path, "no-info")
    (damaged / "run.json").unlink()  # a run's files without run.json: damaged, and listed
    table = list_runs(tmp_path).set_index("name")
    assert sorted(table.index) == ["good", "no-info"] and table.loc["no-info", "status"] == "damaged"


@pytest.mark.parametrize("name", ["x\n", "../x", "/tmp/x", "a/b", "..", "x\x00"])
def test_bad_run_names_are_refused_before_anything_is_written(tmp_path, name):
    with pytest.raises(ValueError, match="bad run name"):
        check_name(name)
    with pytest.raises(ValueError, match="bad run name"):
        train(preset("digits-mlp", **TINY), runs=tmp_path / "root", name=name)
    assert not (tmp_path / "root").exists() and list(tmp_path.iterdir()) == []


def test_a_runs_root_in_or_inside_the_shipped_examples_is_refused(monkeypatch):
    from bsq_explore.paths import EXAMPLES, runs_root

    for root in (EXAMPLES, EXAMPLES / "digits-a0.3", EXAMPLES / "new-folder"):
        monkeypatch.setenv("BSQ_RUNS", str(root))
        with pytest.raises(ValueError, match="inside the shipped examples"):
            runs_root()
    assert runs_root(EXAMPLES) == EXAMPLES  # an explicit --runs may: make examples writes them
