"""Failed runs: a NaN or inf loss, a diverging learning rate, an exception inside training."""
import re

import pytest

import bsq_explore.train as train_module
from bsq_explore.catalog import list_runs
from bsq_explore.cli import main
from bsq_explore.config import preset
from bsq_explore.runs import load_run
from bsq_explore.train import Diverged, RunFailed, train

from conftest import TINY, assert_prefix, last_line, options


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


@pytest.mark.parametrize("stage", ["pretrain", "bsq", "finetune"])
def test_an_error_in_any_stage_lists_as_failed_with_its_reason_and_resume_finishes_the_run(
        tmp_path, tiny_run, monkeypatch, stage):
    real = train_module.run_epoch

    def failing(run, e):  # after the stage's first epoch is on disk
        real(run, e)
        if e.stage == stage:
            raise OSError(f"disk gone in {stage}")

    monkeypatch.setattr(train_module, "run_epoch", failing)
    with pytest.raises(RunFailed):
        train(preset("digits-mlp", **TINY), runs=tmp_path, name="f")
    row = list_runs(tmp_path).iloc[0]
    assert (row.status, row.reason) == ("failed", f"OSError: disk gone in {stage}")
    monkeypatch.setattr(train_module, "run_epoch", real)
    train_module.resume(tmp_path / "f")
    run, ref = load_run(tmp_path / "f"), load_run(tiny_run)
    assert run.info["status"] == "finished" and run.info["error"] is None and run.info["summary"] == ref.info["summary"]
    for kind in ("metrics", "bits", "layers"):
        assert_prefix(getattr(run, kind), getattr(ref, kind))
        assert len(getattr(run, kind)) == len(getattr(ref, kind))
