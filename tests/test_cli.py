"""The bsq-explore command: outputs on a real run, one-line errors with exit code 2 on bad input."""
import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings

import bsq_explore.cli as cli
import bsq_explore.paths as paths
import bsq_explore.sweep as sweep_module
import bsq_explore.train as train_module
from bsq_explore.cli import main
from bsq_explore.paths import EXAMPLES
from bsq_explore.store import check_name

from conftest import copy_run, one_line


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "bsq_explore.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args, says", [
    (["train", "--preset", "nope"], "unknown preset 'nope'; choose one of: digits-mlp"),
    (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'; choose one of: digits"),
    (["train", "--model", "vgg"], "unknown model 'vgg'; choose one of: mlp"),
    (["train", "--colour", "red"], "unrecognized arguments: --colour red; valid options:"),
    (["train", "--alpha", "-1"], "alpha must be >= 0"),
    (["train", "--nbits", "17"], "nbits must be 1..16"),
    (["train", "--nbits", "0"], "nbits must be 1..16"),
    (["train", "--nbits", "two"], "argument --nbits: invalid"),
    (["train", "--dataset", "folder:/nonexistent"], "needs train/ and test/ subfolders"),
    (["train", "--name", "../escape"], "bad run name"),
    (["train", "--resume"], "--resume and --overwrite need --name"),
    (["train", "--device", "cuda:1"] if not torch.cuda.is_available() else ["train", "--device", "tpu"],
     "CUDA is not available" if not torch.cuda.is_available() else "device must be cpu, cuda, auto or cuda:N"),
    (["train", "--config", "/nonexistent.json"], "cannot read --config /nonexistent.json"),
    (["train", "--preset", "digits-mlp", "--config", "x.json"], "--preset and --config exclude each other"),
    (["sweep", "--alphas", "a,b"], "expected comma-separated numbers"),
    (["sweep", "--alphas", "0.1", "--hessian", "0"], "--hessian: takes a whole number of samples >= 1"),
    (["sweep", "--alphas", "0.1", "--hessian", "-3"], "--hessian: takes a whole number of samples >= 1"),
    (["sweep", "--alphas", "0.1", "--uniform", "0"], "nbits must be 1..16"),
    (["sweep", "--alphas", "0.1", "--uniform", "17"], "nbits must be 1..16"),
    (["sweep", "--alphas", "0.1,0.1"], "would share the name"),
    (["sweep", "--alphas", "0.1234561,0.1234562"], "alphas equal to 6 significant digits share a name"),
    (["sweep", "--alphas", "0.1", "--name", "s" * 125], "bad run name"),
    (["train", "--pretrain-epochs", "0", "--bsq-epochs", "0", "--finetune-epochs", "0"], "at least one epoch"),
    (["train", "--pretrained", "/dev/null"], "--pretrained /dev/null is not a torch state_dict"),
    (["train", "--pretrained", "/nonexistent.pt"], "--pretrained /nonexistent.pt does not exist"),
    (["show", "no-such-run"], "no run 'no-such-run'"),
    (["frobnicate"], "invalid choice"),
    (["train", "--bsq-epochs", "1000000000"], "epochs must be 0..10,000 a stage"),
    (["sweep", "--alphas", "0.1", "--finetune-epochs", "10001"], "epochs must be 0..10,000 a stage"),
    (["train", "--requant-every", "99999999"], "requant_every must be 1..10,000"),
    (["train", "--bsq-milestones", "-5"], "milestones must be epochs 1..10,000"),
    (["train", "--batch-size", "1000000000"], "batch_size must be 1..65,536"),
    (["train", "--train-subset", "99999999999"], "subsets must be 0..1,000,000,000 images"),
    (["train", "--seed", "-1"], "seed must be 0..2**63 - 1"),
    (["train", "--seed", str(2**64 - 1)], "seed must be 0..2**63 - 1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, says):
    assert main([*args, *(["--runs", str(tmp_path)] if args[0] in ("train", "sweep", "show") else [])]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines
    assert list(tmp_path.iterdir()) == [], "bad input must not leave a run folder"


def test_a_pretrained_file_that_is_not_this_models_state_dict_is_one_line_before_training(tmp_path, capsys):
    from bsq_explore.config import preset
    from bsq_explore.data import load
    from bsq_explore.models import build_model

    files = {"truncated": b"PK\x03\x04", "not tensors": {"a": [1, 2]},
             "another model": build_model(preset("digits-cnn"), load("digits")).state_dict()}
    for name, content in files.items():
        path = tmp_path / f"{name}.pt"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        assert main(["train", "--pretrained", str(path), "--runs", str(tmp_path / "runs")]) == 2, name
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and f"--pretrained {path} is not" in lines[0], lines
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_images_too_small_for_the_model_are_one_line_before_training(tmp_path, capsys):
    from PIL import Image

    for part in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / part / cls).mkdir(parents=True)
            Image.new("RGB", (1, 1)).save(tmp_path / part / cls / "0.png")
    code = main(["train", "--dataset", f"folder:{tmp_path}", "--model", "lenet5", "--runs", str(tmp_path / "runs")])
    assert code == 2 and "lenet5 cannot take 3x1x1 images" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_the_console_entry_point_exits_2_on_bad_input():
    result = run_cli("train", "--preset", "nope")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and result.stdout == ""


def test_missing_torchvision_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BSQ_DATA", str(tmp_path / "data"))
    assert main(["train", "--dataset", "mnist", "--runs", str(tmp_path / "runs")]) == 2
    assert "mnist is not under" in capsys.readouterr().err


def test_existing_run_name(tiny_run, capsys):
    assert main(["train", "--runs", str(tiny_run.parent), "--name", "tiny"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_ls_show_export(tiny_run, tmp_path, capsys):
    assert main(["ls", str(tiny_run.parent)]) == 0
    listing = capsys.readouterr().out
    assert "tiny" in listing and "finished" in listing
    assert main(["show", str(tiny_run)]) == 0
    shown = capsys.readouterr().out
    assert "status     finished" in shown and "linear" in shown
    out = tmp_path / "q.pt"
    assert main(["export", "tiny", "--runs", str(tiny_run.parent), "--out", str(out)]) == 0
    exported = torch.load(out, weights_only=True)
    assert set(exported["layers"]) == {"fc1", "fc2", "fc3"}


def test_ls_of_an_empty_root_says_how_to_start(tmp_path, capsys):
    assert main(["ls", str(tmp_path)]) == 0
    assert "bsq-explore train" in capsys.readouterr().out


def test_train_with_overrides(tmp_path, capsys):
    args = ["train", "--runs", str(tmp_path), "--name", "cli", "--pretrain-epochs", "1", "--bsq-epochs", "2",
            "--requant-every", "1", "--finetune-epochs", "0", "--alpha", "0.2", "--bsq-milestones", "1"]
    assert main(args) == 0
    from bsq_explore.runs import load_run

    run = load_run(tmp_path / "cli")
    assert run.info["config"]["alpha"] == 0.2 and run.info["config"]["bsq_milestones"] == [1]
    assert run.metrics.lr.tolist() == pytest.approx([0.1, 0.05, 0.05, 0.005])


def test_train_from_a_run_json_config_with_overrides(tmp_path, tiny_run, capsys):
    from bsq_explore.runs import load_run

    args = ["train", "--config", str(tiny_run / "run.json"), "--pretrain-epochs", "1", "--bsq-epochs", "0",
            "--finetune-epochs", "0", "--name", "again", "--runs", str(tmp_path)]
    assert main(args) == 0
    config, source = load_run(tmp_path / "again").config, load_run(tiny_run).config
    assert config == source.replace(pretrain_epochs=1, bsq_epochs=0, finetune_epochs=0)


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

    def map(self, fn, tasks, chunksize=1):
        return [fn(task) for task in tasks]

    def close(self):
        pass

    def join(self):
        pass

    def terminate(self):
        pass


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


def test_help_answers_without_importing_torch():
    code = ("import sys\nfrom bsq_explore.cli import main\n"
            "assert main(['train', '--help']) == 0 and 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and "--alpha" in result.stdout, result.stderr


def test_export_refuses_an_output_inside_a_run_folder_or_one_that_is_not_a_regular_file(tmp_path, tiny_run, capsys):
    folder = copy_run(tiny_run, tmp_path, "r")
    model = (folder / "model.pt").read_bytes()
    (tmp_path / "link.pt").symlink_to(tmp_path / "target.pt")
    for out, why in [(folder / "model.pt", "inside the run folder"), (folder / "sub" / "x.pt", "inside the run folder"),
                     (tmp_path / "link.pt", "not a regular file"), ("/dev/null", "not a regular file"),
                     (tmp_path, "not a regular file")]:
        assert main(["export", str(folder), "--out", str(out)]) == 2, out
        assert why in one_line(capsys.readouterr().err)
    assert (folder / "model.pt").read_bytes() == model and (tmp_path / "link.pt").is_symlink()
    assert main(["export", str(folder), "--out", str(tmp_path / "new.pt")]) == 0


def test_misc_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    """--float-layers that leave nothing to quantize, a --config that is /dev/zero or a pipe, a sweep
    into a root it cannot write: refused before any training."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "file").write_text("a file, not a folder")
    for argv, says in [(["train", "--float-layers", "*", "--runs", str(tmp_path / "r")], "no layer of mlp is left to quantize"),
                       (["train", "--config", "/dev/zero"], "cannot read --config /dev/zero: not a regular file"),
                       (["train", "--config", str(fifo)], "not a regular file"),
                       (["sweep", "--alphas", "0.1", "--runs", str(tmp_path / "file" / "sub")],
                        "cannot write to runs root")]:
        assert main(argv) == 2, argv
        assert says in one_line(capsys.readouterr().err), argv
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_ls_and_show_never_print_control_characters_from_a_run_folder(tmp_path, tiny_run, capsys):
    folder = copy_run(tiny_run, tmp_path, "r")
    info = json.loads((folder / "run.json").read_text())
    info.update(status="failed", error="\x1b]0;pwned\x07\x1b[2J boom")
    (folder / "run.json").write_text(json.dumps(info))
    for argv in (["ls", str(tmp_path)], ["show", str(folder)]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\x07" not in out and "\\x1b" in out, argv


def test_a_closed_pipe_ends_ls_quietly():
    read, write = os.pipe()
    os.close(read)  # the reader is gone before ls writes (as `ls | head` once head has its lines)
    ls = subprocess.run([sys.executable, "-m", "bsq_explore.cli", "ls", str(EXAMPLES)], stdout=write,
                        stderr=subprocess.PIPE, text=True)
    os.close(write)
    assert ls.returncode == 0 and ls.stderr == ""


def test_a_config_from_a_sweep_run_whose_float_model_is_gone_says_what_to_pass(tmp_path, capsys):
    info = json.loads((EXAMPLES / "digits-a0.3" / "run.json").read_text())
    info["config"]["pretrained"] = str(tmp_path / "pruned" / "float.pt")  # a sweep's float model, deleted
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps(info))
    assert main(["train", "--config", str(run_json), "--runs", str(tmp_path)]) == 2
    assert "pass --pretrained FILE, or --pretrained '' --pretrain-epochs N" in one_line(capsys.readouterr().err)
    args = ["train", "--config", str(run_json), "--pretrained", "", "--pretrain-epochs", "1", "--bsq-epochs", "1",
            "--finetune-epochs", "1", "--name", "again", "--runs", str(tmp_path)]
    assert main(args) == 0 and (tmp_path / "again" / "model.pt").is_file()
