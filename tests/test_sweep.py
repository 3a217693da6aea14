"""Sweeps: one float model shared by every run, baselines, re-running completes instead of repeating."""
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from bsq_explore.catalog import list_runs, sweep_table
from bsq_explore.paths import EXAMPLES, REPO
from bsq_explore.runs import load_run
from bsq_explore.sweep import sweep

from conftest import TINY

SMALL = {k: v for k, v in TINY.items() if k != "alpha"}
ALPHAS, UNIFORM = [0.3, 0.0], [3]


def small_sweep(root, alphas=ALPHAS, uniform=UNIFORM, **how):
    return sweep("digits-mlp", alphas, runs=root, name="sw", uniform_bits=uniform, **SMALL, **how)


@pytest.fixture(scope="session")
def local_sweep(tmp_path_factory):
    """One small sweep run two jobs at a time, shared by the tests below (they only read it)."""
    root = tmp_path_factory.mktemp("sweep")
    return root, small_sweep(root, jobs=2)


def assert_same_runs(a_root: Path, b_root: Path, names) -> None:
    """Frames bit-identical run by run (timings aside): scheduling must not change a result."""
    for name in names:
        a, b = load_run(a_root / name), load_run(b_root / name)
        for kind in ("metrics", "bits", "layers"):
            pd.testing.assert_frame_equal(getattr(a, kind).drop(columns="seconds", errors="ignore"),
                                          getattr(b, kind).drop(columns="seconds", errors="ignore"))
        assert a.info["summary"] == b.info["summary"]


def test_sweep_shares_the_float_model_and_resumes(local_sweep):
    root, table = local_sweep
    assert table.name.tolist() == ["sw-float", "sw-a0", "sw-a0.3", "sw-u3"]
    assert table.status.eq("finished").all() and table.attrs["errors"] == []
    float_run = load_run(root / "sw-float")
    for name in ("sw-a0", "sw-a0.3", "sw-u3"):
        config = load_run(root / name).info["config"]
        assert config["pretrain_epochs"] == 0 and config["pretrained"] == str(root / "sw-float" / "float.pt")
        assert load_run(root / name).info["sweep"] == "sw"
    assert float_run.metrics.stage.eq("pretrain").all()
    # the alpha-0 run starts from the float model: its conversion snapshot equals the float accuracy
    # up to 8-bit rounding
    snapshot = load_run(root / "sw-a0").metrics.query("stage == 'bsq' and epoch == 0").test_acc.item()
    assert abs(snapshot - float_run.metrics.test_acc.iloc[-1]) < 0.02
    assert table.set_index("name").loc["sw-u3", "avg_bits"] == 3

    before = {p: p.stat().st_mtime_ns for p in root.glob("*/run.json")}
    again = small_sweep(root, jobs=1)
    assert {p: p.stat().st_mtime_ns for p in root.glob("*/run.json")} == before, "finished runs are never re-run"
    assert again.drop(columns="reason").equals(table.drop(columns="reason"))


def test_a_finished_two_job_sweep_lets_its_workers_leave_instead_of_terminating_them(tmp_path, monkeypatch):
    """terminate() sends each worker SIGTERM, which may land on a BLAS thread while the main one waits on
    the task queue's lock: the worker never exits and the sweep hangs (it did, once, in CI)."""
    import multiprocessing.pool

    terminated = []
    monkeypatch.setattr(multiprocessing.pool.Pool, "terminate", lambda pool: terminated.append(pool))
    table = small_sweep(tmp_path, alphas=[0.3], jobs=2)  # two runs in the pool: alpha 0.3 and uniform 3-bit
    assert terminated == [] and table.status.eq("finished").all() and len(table) == 3  # and the float model


def test_one_job_and_two_jobs_give_the_same_frames(local_sweep, tmp_path):
    root, table = local_sweep
    serial = small_sweep(tmp_path, jobs=1)
    assert serial.drop(columns="reason").equals(table.drop(columns="reason"))
    assert_same_runs(root, tmp_path, table.name)
    assert {load_run(tmp_path / n).info["provenance"]["threads"] for n in table.name} == {1}  # the config's


def test_sweep_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="alphas"):
        sweep("digits-mlp", [], runs=tmp_path)
    with pytest.raises(ValueError, match="jobs"):
        sweep("digits-mlp", [0.1], jobs=0, runs=tmp_path)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        sweep("digits-mlp", [0.1, float("inf")], runs=tmp_path)
    assert list(tmp_path.iterdir()) == [], "nothing trains before every alpha is known to be valid"


def shipped():
    return sweep_table(list_runs(EXAMPLES), "digits")


def test_shipped_sweep_bits_fall_as_alpha_grows():
    bsq = shipped().query("kind == 'bsq'").sort_values("alpha")
    assert len(bsq) >= 6 and bsq.alpha.iloc[0] == 0 and bsq.status.eq("finished").all()
    assert bsq.avg_bits.is_monotonic_decreasing
    assert abs(bsq.avg_bits.iloc[0] - 8) <= 0.5


def test_shipped_sweep_reaches_10x_within_2_points_of_float():
    table = shipped()
    float_acc = table.query("kind == 'float'").test_acc.item()  # noqa: F841 (read by the query below)
    good = table.query("kind == 'bsq' and compression >= 10 and test_acc >= @float_acc - 0.02")
    assert len(good) >= 1


def shipped_files() -> list[Path]:
    """The files of data/examples that git tracks (a sweep running here adds checkpoints it never commits)."""
    repo = EXAMPLES.parents[1]
    out = subprocess.run(["git", "ls-files", "-z", str(EXAMPLES)], capture_output=True, text=True, cwd=repo)
    if out.returncode:  # not a git checkout (an unpacked archive): every file is shipped
        return [p for p in EXAMPLES.rglob("*") if p.is_file()]
    return [repo / name for name in out.stdout.split("\0") if name]


def test_shipped_sweep_has_uniform_baselines_and_small_files():
    assert shipped().query("kind == 'uniform'").nbits.tolist() == [2, 3, 4, 8]
    files = shipped_files()
    assert files and sum(p.stat().st_size for p in files) < 15e6
    # a checkpoint ships only where a sweep is still training across sessions: in a run not finished
    checkpoints = [p for p in files if p.name == "checkpoint.pt"]
    assert all(load_run(p.parent).info["status"] != "finished" and p.stat().st_size < 5e6 for p in checkpoints)
    assert {p.parent.name for p in files if p.name == "float.pt"} <= {p.name for p in EXAMPLES.glob("*-float")}
    for path in EXAMPLES.glob("*-a*"):
        if path.is_dir() and load_run(path).info["status"] == "finished":  # not a running sweep's lock file
            torch.load(path / "model.pt", weights_only=True)


def test_shipped_fashion_sweep_spans_8_bits_to_collapse_with_every_baseline():
    table = sweep_table(list_runs(EXAMPLES), "fashion")
    assert table.status.eq("finished").all()
    assert table.query("kind == 'float'").test_acc.item() >= 0.90
    bsq = table.query("kind == 'bsq'").sort_values("alpha")
    assert len(bsq) >= 8 and bsq.alpha.iloc[0] == 0 and bsq.avg_bits.iloc[0] == 8
    assert bsq.avg_bits.iloc[-1] < 1 and bsq.test_acc.iloc[-1] < 0.5, "the largest alpha is past the collapse"
    assert table.query("kind == 'uniform'").nbits.tolist() == [1, 2, 3, 4, 8]


def cifar10_plan():
    """The configs the Makefile's cifar10 sweep runs, from the shipped float run's own config."""
    from bsq_explore.config import preset
    from bsq_explore.sweep import plan_sweep

    float_run = load_run(EXAMPLES / "cifar10-float")
    config = preset(CIFAR10_SWEEP["preset"], dataset=float_run.config.dataset)
    return config, plan_sweep(config, CIFAR10_ALPHAS, [int(b) for b in CIFAR10_SWEEP["uniform"].split(",")],
                              EXAMPLES / "cifar10-float" / "float.pt", equal_compute="equal-compute" in CIFAR10_SWEEP)


README = REPO / "README.md"
# the arguments `make examples-cifar10` gives the sweep (a flag maps to ""): the Makefile is their one place
CIFAR10_SWEEP = dict(re.findall(r"--([\w-]+)(?: ([^-\s]\S*))?", re.search(
    r"^examples-cifar10:.*?\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M).group(1)))
CIFAR10_ALPHAS = [float(a) for a in CIFAR10_SWEEP["alphas"].split(",")]
STEPS_PER_EPOCH = -(-50_000 // 128)  # all of CIFAR-10's training images, batch 128


def test_shipped_cifar10_float_model_is_a_resnet20_trained_on_all_of_cifar10_as_the_readme_reports():
    float_run = load_run(EXAMPLES / "cifar10-float")
    config, _ = cifar10_plan()
    assert float_run.config == config.replace(bsq_epochs=0, finetune_epochs=0)
    assert config.model == "resnet20" and config.act_bits == 4 and config.dataset.startswith("folder:")
    assert config.train_subset == config.test_subset == 0, "all 50,000 training and 10,000 test images"
    if float_run.info["status"] != "finished":  # the sweep trains across sessions (issue 24)
        pytest.skip(f"cifar10-float is {float_run.info['status']} at epoch {len(float_run.metrics)} of "
                    f"{config.pretrain_epochs}")
    assert (EXAMPLES / "cifar10-float" / "float.pt").is_file() and len(float_run.metrics) == config.pretrain_epochs
    accuracy = float_run.metrics.test_acc.iloc[-1]
    # the issue asked for 90 %; 80 cosine epochs gave 87.9 %, and the README says so, with the curve
    assert accuracy >= 0.875 and f"finished its 80 epochs at **{100 * accuracy:.1f} %**" in README.read_text()


def test_the_readme_quotes_each_shipped_verdict_as_the_runs_give_it():
    from bsq_explore.analysis import twins, twins_sentence, verdict_sentence

    text = " ".join(README.read_text().split())  # as written, whatever the line breaks
    listing = list_runs(EXAMPLES)
    for name, kind in (("fashion", "bsq"), ("fashion", "hessian"), ("cifar10", "bsq"), ("cifar10", "hessian")):
        said = verdict_sentence(sweep_table(listing, name), kind)
        assert f'"{said.removesuffix(".")}' in text, said
    said = twins_sentence(twins(sweep_table(listing, "cifar10")))
    assert f'"{said.removesuffix(".")}' in text, said


def _stage_bits(bits: pd.Series) -> str:
    """A ResNet-20's bits per layer as the README writes them: conv1 / stage 1 / 2 / 3 / fc, a stage as fewest-most."""
    groups = [["conv1"], *([n for n in bits.index if n.startswith(f"layer{i}.")] for i in (1, 2, 3)), ["fc"]]
    spans = [(int(bits[g].min()), int(bits[g].max())) for g in groups]
    return " / ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in spans)


def test_the_readmes_cifar10_table_has_every_finished_run_as_its_folder_gives_it():
    readme = README.read_text()
    found = re.findall(r"^\| (cifar10-[\w.]+) \| (.*) \|$", readme, re.M)
    rows = dict(found)
    table = sweep_table(list_runs(EXAMPLES), "cifar10").query("status == 'finished'")
    assert len(found) == len(rows) and set(rows) == set(table.name), "one row for each finished run, and only those"
    hours = 0
    for name in table.name:
        run = load_run(EXAMPLES / name)
        summary, seconds = run.summary, run.metrics.seconds.sum()
        hours += seconds / 3600
        bits = run.final_layers().set_index("layer").nbits
        after = "" if summary["bsq_acc"] is None else f"{100 * summary['bsq_acc']:.1f}"
        method, *cells = [cell.strip() for cell in rows[name].split(" | ")]
        alpha = f"alpha {run.config.alpha:g}"
        assert method == {"float": "float", "bsq": f"BSQ, {alpha}", "uniform": f"uniform {run.config.nbits}-bit",
                          "hessian": f"Hessian twin of {alpha}"}[run.kind], name
        assert cells == ["32" if bits.empty else f"{summary['avg_bits']:.2f}", f"{summary['compression']:.1f}x",
                         "32" if bits.empty else _stage_bits(bits), after, f"{100 * summary['test_acc']:.1f}",
                         f"{seconds / 60:.0f}"], name
    assert f"{hours:.1f} hours** of logged epoch time" in " ".join(readme.split())


def test_shipped_cifar10_runs_have_the_long_schedule_and_equal_compute_baselines():
    config, planned = cifar10_plan()
    assert config.bsq_epochs * STEPS_PER_EPOCH >= 4000 and config.finetune_epochs * STEPS_PER_EPOCH >= 2000
    requants = [e for e in range(1, config.bsq_epochs + 1) if e % config.requant_every == 0 or e == config.bsq_epochs]
    assert len(requants) >= 3
    assert len(CIFAR10_ALPHAS) >= 6 and min(CIFAR10_ALPHAS) == 0, "from about 8 bits: no penalty, re-quantization only"
    for c in planned[len(CIFAR10_ALPHAS):]:  # a baseline trains as many steps as a BSQ run
        assert c.bsq_epochs == 0 and c.finetune_epochs == config.bsq_epochs + config.finetune_epochs
    table = sweep_table(list_runs(EXAMPLES), "cifar10")
    shipped = {name: load_run(EXAMPLES / name).config for name in table.name}
    float_model = (EXAMPLES / "cifar10-float" / "float.pt").resolve()  # the Makefile passes a relative root
    assert all(Path(EXAMPLES.parents[1], c.pretrained).resolve() == float_model for c in shipped.values() if c.pretrained)
    twins = set(table.query("kind == 'hessian'").name)
    assert twins, "the sweep's Hessian twins ship as they finish (issue 28)"
    assert {c.replace(pretrained="") for name, c in shipped.items() if name not in twins} <= {
        c.replace(pretrained="") for c in (config.replace(bsq_epochs=0, finetune_epochs=0), *planned)}
    for name in twins:  # a BSQ run's config with the bits chosen and the baselines' budget (hessian_twins)
        twin = shipped[name]
        assert twin.layer_bits and twin.bsq_epochs == 0 and twin.finetune_epochs == config.bsq_epochs + config.finetune_epochs
        untwinned = twin.replace(layer_bits="", pretrained="", bsq_epochs=config.bsq_epochs,
                                 finetune_epochs=config.finetune_epochs)
        assert untwinned == config.replace(alpha=twin.alpha, pretrain_epochs=0, pretrained="")
    for name in table.query("kind == 'bsq' and status == 'finished'").name:
        run = load_run(EXAMPLES / name)
        last = run.layers[run.layers.step == run.layers.step.max()]
        assert len(last) == 20 and not last.layer.str.contains("downsample").any()  # a 20-layer heatmap


def test_a_shipped_cifar10_bsq_run_exported_to_qonnx_scores_its_recorded_accuracy():
    pytest.importorskip("qonnx", reason="QONNX is the optional extra bsq_explore[qonnx] (make test installs it)")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    from bsq_explore.data import load_for
    from bsq_explore.export import load_model
    from bsq_explore.graphs import to_qonnx

    table = sweep_table(list_runs(EXAMPLES), "cifar10").query("kind == 'bsq' and status == 'finished'")
    if table.empty:
        pytest.skip("no BSQ run of the cifar10 sweep has finished yet")
    run = load_run(EXAMPLES / table.sort_values("compression").name.iloc[len(table) // 2])
    data = load_for(run.config)
    model = load_model(run, data).eval()
    x, y = data.test_x[:300], data.test_y[:300]
    proto = to_qonnx(model, tuple(data.shape), batch=len(x))
    logits = execute_onnx(ModelWrapper(proto), {"input": x.numpy()})[proto.graph.output[0].name]
    accuracy = float((torch.from_numpy(logits).argmax(1) == y).float().mean())
    recorded = run.info["summary"]["test_acc"]
    # 300 images: one standard error is about 1.7 points at 90 %; the graph's fixed activation scale
    # (the running max) stands in for the batch max the engine evaluates with
    assert abs(accuracy - recorded) < 0.06


def test_ray_backend_writes_the_same_runs_as_the_local_one(local_sweep, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is the optional extra bsq_explore[ray] (make test installs it)")
    root, local = local_sweep
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)  # two 2-CPU tasks at a time
    try:  # each task asks for 2 CPUs, but its run still uses the config's one thread
        remote = small_sweep(tmp_path, alphas=[0.3], uniform=[], backend="ray", cpus_per_trial=2)
    finally:
        ray.shutdown()
    assert remote.name.tolist() == ["sw-float", "sw-a0.3"] and remote.status.eq("finished").all()
    assert remote.drop(columns="reason").equals(local[local.name.isin(remote.name)].reset_index(drop=True)
                                                .drop(columns="reason"))
    assert_same_runs(root, tmp_path, remote.name)


def test_a_sweep_run_again_under_its_name_with_another_config_is_refused(local_sweep):
    root, table = local_sweep
    before = {p: p.stat().st_mtime_ns for p in root.glob("*/run.json")}
    with pytest.raises(ValueError, match=r"sweep sw already has sw-float with another config: seed \(0 in the run, 1 given\)"):
        small_sweep(root, seed=1)
    with pytest.raises(ValueError, match=r"bsq_epochs \(4 in the run, 5 given\)"):
        sweep("digits-mlp", [0.3], runs=root, name="sw", uniform_bits=[], **{**SMALL, "bsq_epochs": 5})
    assert {p: p.stat().st_mtime_ns for p in root.glob("*/run.json")} == before, "nothing ran"


@pytest.fixture(scope="module")
def twin_sweep(tmp_path_factory):
    """The small sweep with a Hessian twin of each BSQ run (4 samples): its root and table."""
    root = tmp_path_factory.mktemp("twins")
    return root, small_sweep(root, progress=False, hessian=4)


def test_hessian_twins_take_each_bsq_runs_size_and_keep_their_traces(twin_sweep):
    from bsq_explore.store import TRACES

    root, table = twin_sweep
    bsq = table[table.kind == "bsq"].set_index("alpha")
    twins = table[table.kind == "hessian"].set_index("alpha")
    assert sorted(twins.index) == sorted(bsq.index[bsq.avg_bits >= 1]) and twins.status.eq("finished").all()
    assert (twins.avg_bits <= bsq.avg_bits[twins.index] + 1e-9).all()  # the BSQ run's size is the budget
    for alpha, twin in twins.iterrows():
        run = load_run(root / twin["name"])
        chosen = run.config.chosen_bits()
        assert run.config.bsq_epochs == 0 and run.config.finetune_epochs == SMALL["finetune_epochs"]
        assert dict(zip(run.final_layers().layer, run.final_layers().nbits)) == chosen and set(chosen) == {"fc1", "fc2",
                                                                                                             "fc3"}
        traces = pd.read_parquet(root / twin["name"] / TRACES)
        assert traces.layer.tolist() == ["fc1", "fc2", "fc3"] and (traces.samples == 4).all()
        assert run.read_traces().trace.tolist() == traces.trace.tolist()
    assert small_sweep(root, progress=False, hessian=4).equals(table)  # a rerun keeps every finished twin
    with pytest.raises(ValueError, match="hessian samples >= 0"):
        small_sweep(root, progress=False, hessian=-1)


def test_a_rerun_takes_the_traces_its_finished_twins_keep_instead_of_measuring_them_again(twin_sweep, monkeypatch):
    from bsq_explore import sensitivity

    root, table = twin_sweep
    monkeypatch.setattr(sensitivity, "layer_traces", lambda *a, **k: pytest.fail("traces measured again"))
    assert small_sweep(root, progress=False, hessian=4).equals(table)
    with pytest.raises(pytest.fail.Exception, match="measured again"):  # other samples: other traces
        small_sweep(root, progress=False, hessian=3)


def test_twins_that_finished_in_a_killed_sweep_get_their_traces_when_it_runs_again(twin_sweep):
    from bsq_explore.store import TRACES

    root, table = twin_sweep
    names = table[table.kind == "hessian"].name
    kept = {name: load_run(root / name).read_traces() for name in names}
    runs = {p: p.stat().st_mtime_ns for p in root.glob("*/run.json")}
    for name in names:  # killed after the twins finished, before the traces were written into them
        (root / name / TRACES).unlink()
    assert small_sweep(root, progress=False, hessian=4).equals(table)
    for name in names:
        pd.testing.assert_frame_equal(load_run(root / name).read_traces(), kept[name])  # seeded: the same traces
    assert {p: p.stat().st_mtime_ns for p in root.glob("*/run.json")} == runs, "no twin trained again"


@pytest.mark.parametrize("spoil", ["damaged", "older"])
def test_a_rerun_measures_the_traces_again_when_the_kept_ones_are_damaged_or_older_than_the_float_model(
        twin_sweep, monkeypatch, spoil):
    import os

    from bsq_explore import sensitivity
    from bsq_explore.store import TRACES

    root, table = twin_sweep
    kept = {path: (path.read_bytes(), path.stat().st_mtime)
            for path in (root / n / TRACES for n in table[table.kind == "hessian"].name)}
    monkeypatch.setattr(sensitivity, "layer_traces", lambda *a, **k: pytest.fail("traces measured again"))
    try:
        for path, (data, _) in kept.items():
            if spoil == "damaged":
                path.write_bytes(data[:-20])  # cut short: no parquet footer
            else:  # a float model written after the traces were measured: another model
                os.utime(path, (1e9, 1e9))
        with pytest.raises(pytest.fail.Exception, match="measured again"):
            small_sweep(root, progress=False, hessian=4)
    finally:  # the module's sweep as it was, for the tests after this one
        for path, (data, mtime) in kept.items():
            path.write_bytes(data)
            os.utime(path, (mtime, mtime))


def test_twins_of_a_sweep_without_a_finished_bsq_run_are_an_error_of_the_sweep_not_a_traceback(local_sweep):
    from bsq_explore.config import preset
    from bsq_explore.sweep import _run_twins

    root, _ = local_sweep
    errors = _run_twins(preset("digits-mlp"), root, "no-such-sweep", root / "sw-float" / "float.pt", 2, False, execute=None)
    assert errors == ["no Hessian twin: sweep no-such-sweep has no finished BSQ run"]


def test_a_hessian_twin_exports_to_qonnx_and_scores_as_the_model_does(twin_sweep):
    pytest.importorskip("qonnx", reason="QONNX is the optional extra bsq_explore[qonnx] (make test installs it)")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    from bsq_explore.data import load_for
    from bsq_explore.export import load_model
    from bsq_explore.graphs import to_qonnx

    root, table = twin_sweep
    run = load_run(root / table[table.kind == "hessian"].name.iloc[-1])
    data = load_for(run.config)
    model = load_model(run, data).eval()
    proto = to_qonnx(model, tuple(data.shape), batch=8)
    logits = execute_onnx(ModelWrapper(proto), {"input": data.test_x[:8].numpy()})[proto.graph.output[0].name]
    assert torch.allclose(torch.from_numpy(logits), model(data.test_x[:8]).detach(), atol=1e-4)


def test_a_damaged_traces_frame_is_refused_in_one_line(twin_sweep, tmp_path):
    import shutil

    from bsq_explore.runs import DamagedRun
    from bsq_explore.store import TRACES

    root, table = twin_sweep
    twin = tmp_path / "twin"
    shutil.copytree(root / table[table.kind == "hessian"].name.iloc[0], twin)
    (twin / TRACES).write_bytes(b"not parquet")
    with pytest.raises(DamagedRun, match="traces.parquet is unreadable"):
        load_run(twin).read_traces()
    pd.DataFrame(dict(layer=["<a href=x>"], layer_index=[0], numel=[1], trace=[1.0], trace_std=[0.1],
                      samples=[4])).to_parquet(twin / TRACES)
    with pytest.raises(DamagedRun, match="has a layer that no run writes"):
        load_run(twin).read_traces()


