"""The staged run and its folder contract."""
import pandas as pd
import pytest
import torch

from bsq_explore.config import BSQConfig, preset
from bsq_explore.data import load
from bsq_explore.export import load_quantized
from bsq_explore.models import build_model
from bsq_explore.runs import load_run
from bsq_explore.store import FRAME_COLUMNS
from bsq_explore.train import RunFailed, evaluate, resume, train

from conftest import TINY, stopped_copy

KEYS = {"metrics": ["stage", "epoch"], "bits": ["stage", "epoch", "layer", "bit"], "layers": ["stage", "epoch", "layer"]}
DTYPES = {"stage": "object", "layer": "object", "kind": "object", "epoch": "int64", "step": "int64",
          "layer_index": "int64", "bit": "int64", "nbits": "int64", "numel": "int64", "lsb_offset": "int64"}


def test_frames_follow_the_contract(tiny_run):
    run = load_run(tiny_run)
    for kind, columns in FRAME_COLUMNS.items():
        frame = getattr(run, kind)
        assert list(frame.columns) == columns, kind
        assert not frame.duplicated(KEYS[kind]).any(), f"{kind}: one row per key"
        for column in frame.columns:
            expected = DTYPES.get(column, "float64")
            actual = "object" if frame[column].dtype == object or str(frame[column].dtype) in ("str", "string") \
                else str(frame[column].dtype)
            assert actual == expected, f"{kind}.{column} is {actual}"
    m = run.metrics
    # 3 float epochs, BSQ snapshot + 4 epochs, 2 finetune epochs; steps count trained epochs
    assert list(zip(m.stage, m.epoch, m.step)) == [("pretrain", 1, 1), ("pretrain", 2, 2), ("pretrain", 3, 3),
                                                  ("bsq", 0, 3), ("bsq", 1, 4), ("bsq", 2, 5), ("bsq", 3, 6),
                                                  ("bsq", 4, 7), ("finetune", 1, 8), ("finetune", 2, 9)]
    assert (m[m.stage == "pretrain"].avg_bits == 32).all()
    assert set(run.bits.stage) == {"bsq", "finetune"}
    # bits and layers agree on each layer's precision at every epoch
    merged = run.bits.merge(run.layers, on=["stage", "epoch", "layer"], suffixes=("", "_l"))
    assert (merged.nbits == merged.nbits_l).all()
    # the metrics' avg_bits is the numel-weighted mean of the layers' bits
    layers = run.layers.assign(weighted=run.layers.numel * run.layers.nbits)
    per_epoch = layers.groupby(["stage", "epoch"]).apply(lambda g: g.weighted.sum() / g.numel.sum(),
                                                         include_groups=False)
    joined = m.set_index(["stage", "epoch"]).avg_bits.loc[per_epoch.index]
    assert joined.to_numpy() == pytest.approx(per_epoch.to_numpy())


def test_run_json_records_config_provenance_and_summary(tiny_run):
    info = load_run(tiny_run).info
    assert BSQConfig.from_dict(info["config"]) == preset("digits-mlp", **TINY)
    assert info["status"] == "finished" and info["error"] is None
    assert {"package", "torch", "python", "git_sha", "device", "seed", "start", "end"} <= set(info["provenance"])
    metrics = load_run(tiny_run).metrics
    assert info["summary"]["test_acc"] == metrics.test_acc.iloc[-1]
    assert info["summary"]["bsq_acc"] == metrics[metrics.stage == "bsq"].test_acc.iloc[-1]


def test_model_pt_reproduces_the_final_accuracy(tiny_run):
    run = load_run(tiny_run)
    config = BSQConfig.from_dict(run.info["config"])
    ds = load(config.dataset)
    model = load_quantized(build_model(config, ds), torch.load(tiny_run / "model.pt", weights_only=True))
    assert evaluate(model, ds.test_x, ds.test_y) == run.metrics.test_acc.iloc[-1]


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in ("seconds",) if c in frame.columns])


def test_same_seed_same_run_and_resume_matches(tmp_path, tiny_run):
    reference = load_run(tiny_run)

    class Stop(Exception):
        pass

    def stop_in_bsq(event):
        if event.stage == "bsq" and event.epoch == 2:
            raise Stop

    with pytest.raises(RunFailed) as failed:
        train(preset("digits-mlp", **TINY), runs=tmp_path, name="cut", callbacks=[stop_in_bsq])
    assert isinstance(failed.value.__cause__, Stop) and failed.value.path == tmp_path / "cut"
    cut = load_run(tmp_path / "cut")
    assert cut.info["status"] == "failed" and len(cut.metrics) == 6
    resume(tmp_path / "cut")
    resumed = load_run(tmp_path / "cut")
    assert resumed.info["status"] == "finished"
    for kind in ("metrics", "bits", "layers"):
        pd.testing.assert_frame_equal(comparable(getattr(resumed, kind)), comparable(getattr(reference, kind)))


def test_resuming_with_another_config_says_which_fields_differ(tmp_path, tiny_run):
    folder = stopped_copy(tiny_run, tmp_path)
    with pytest.raises(ValueError, match=r"alpha \(0.3 in the run, 1.0 given\), seed \(0 in the run, 2 given\)"):
        resume(folder, preset("digits-mlp", **dict(TINY, alpha=1.0, seed=2)))


def test_epoch_count_and_step_learning_rate_schedule():
    config = preset("cifar10-resnet20")
    assert config.epoch_count() == 200 + 351 + 300  # BSQ's epoch 0 is logged too
    bsq, finetune = config.schedule("bsq"), config.schedule("finetune")
    assert bsq.lr_at(250) == pytest.approx(0.1) and bsq.lr_at(251) == pytest.approx(0.01)
    assert finetune.lr_at(251) == pytest.approx(1e-4)


def test_cosine_schedule_falls_from_the_stage_lr_along_a_half_cosine():
    pretrain = preset("cifar10-resnet20", lr_schedule="cosine", pretrain_epochs=5).schedule("pretrain")
    # epoch e of 5: lr 0.1 * (1 + cos(pi (e - 1) / 5)) / 2, by hand
    assert [pretrain.lr_at(e) for e in range(1, 6)] == pytest.approx([0.1, 0.0904508, 0.0654508, 0.0345492, 0.0095492], abs=1e-7)
    assert pretrain.lr_at(0) == pretrain.lr_at(1)  # an entry snapshot trains at none, logs the first


def test_uniform_baseline_keeps_its_precision(tmp_path):
    path = train(preset("digits-mlp", pretrain_epochs=2, bsq_epochs=0, finetune_epochs=2, nbits=3),
                 runs=tmp_path, name="u3")
    run = load_run(path)
    assert set(run.metrics.stage) == {"pretrain", "finetune"}
    assert (run.layers.nbits == 3).all() and (run.metrics[run.metrics.stage == "finetune"].avg_bits == 3).all()


def test_existing_name_is_refused_unless_overwritten(tmp_path):
    config = preset("digits-mlp", pretrain_epochs=1, bsq_epochs=0, finetune_epochs=0)
    train(config, runs=tmp_path, name="x")
    with pytest.raises(FileExistsError, match="already exists"):
        train(config, runs=tmp_path, name="x")
    train(config.replace(seed=1), runs=tmp_path, name="x", overwrite=True)
    assert load_run(tmp_path / "x").info["config"]["seed"] == 1


@pytest.mark.parametrize("name, extra", [
    ("digits-cnn", {}),
    ("cifar10-resnet20-quick", dict(train_subset=64, test_subset=32)),
])
def test_conv_presets_train_end_to_end(tmp_path, name, extra):
    from test_data import CIFAR

    if name.startswith("cifar10"):
        if not CIFAR.is_dir():
            pytest.skip(f"{CIFAR} is absent")
        extra["dataset"] = f"folder:{CIFAR}"
    config = preset(name, pretrain_epochs=1, bsq_epochs=2, requant_every=1, finetune_epochs=1, batch_size=32, **extra)
    run = load_run(train(config, runs=tmp_path, name="conv"))
    assert run.info["status"] == "finished" and len(run.metrics) == 5
    layers = run.layers[run.layers.step == run.layers.step.max()]
    kinds = set(layers.kind)
    assert kinds == {"conv", "linear"}
    if name.startswith("cifar10"):  # the paper recipe keeps the 1x1 shortcuts in float
        assert len(layers) == 20 and not layers.layer.str.contains("downsample").any()


def test_a_run_uses_its_configs_thread_count_and_gives_the_callers_back(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # the caller's own count, unlike the run's
    seen = []
    try:
        path = train(preset("digits-mlp", **dict(TINY, threads=2)), runs=tmp_path, name="t",
                     callbacks=[lambda event: seen.append(torch.get_num_threads())])
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert set(seen) == {2} and load_run(path).info["provenance"]["threads"] == 2


def test_a_cuda_device_this_machine_lacks_is_refused_before_the_run(monkeypatch):
    from bsq_explore.train import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1") and resolve_device("cuda") == torch.device("cuda")
    for name in ("cuda:2", "cuda:x", "cuda:١"):
        with pytest.raises(ValueError, match=f"device {name} does not exist here: this machine has cuda:0 to cuda:1"):
            resolve_device(name)


def test_a_torchvision_classifier_trains_through_every_stage_on_a_folder_of_32x32_images(tmp_path):
    from bsq_explore.cli import main
    from bsq_explore.data import synthetic_image_folder
    from bsq_explore.runs import load_run

    images = synthetic_image_folder(tmp_path / "images", classes=4, train_per_class=16, test_per_class=8)
    args = ["train", "--dataset", f"folder:{images}", "--model", "torchvision:mobilenet_v3_small",
            "--float-layers", "classifier.3", "--pretrain-epochs", "1", "--bsq-epochs", "1", "--finetune-epochs", "1",
            "--batch-size", "32", "--name", "mnv3", "--runs", str(tmp_path / "runs")]
    assert main(args) == 0
    run = load_run(tmp_path / "runs" / "mnv3")
    assert run.info["status"] == "finished" and run.metrics.stage.tolist() == ["pretrain", "bsq", "bsq", "finetune"]
    model = torch.load(tmp_path / "runs" / "mnv3" / "float.pt", weights_only=True)
    convs_and_linears = {k.removesuffix(".weight") for k, v in model.items() if k.endswith(".weight") and v.dim() in (2, 4)}
    assert set(run.layers.layer) == convs_and_linears - {"classifier.3"}  # every Conv2d and Linear but the one kept float


def test_a_run_with_chosen_bits_per_layer_keeps_them_through_finetuning(tmp_path):
    from bsq_explore.config import preset
    from bsq_explore.runs import load_run, run_name
    from bsq_explore.train import train

    chosen = preset("digits-mlp", pretrain_epochs=2, bsq_epochs=0, finetune_epochs=1, alpha=0.3,
                    layer_bits="fc1=2,fc2=3,fc3=6")
    run = load_run(train(chosen, runs=tmp_path, name="h"))
    assert run.kind == "hessian" and run_name(chosen, "digits") == "digits-h0.3"
    assert dict(zip(run.final_layers().layer, run.final_layers().nbits)) == {"fc1": 2, "fc2": 3, "fc3": 6}
    assert run.summary["avg_bits"] == pytest.approx((16384 * 2 + 32768 * 3 + 1280 * 6) / (16384 + 32768 + 1280))
    with pytest.raises(ValueError, match="exactly the layers that convert; check fc3"):
        train(chosen.replace(layer_bits="fc1=2,fc2=3"), runs=tmp_path, name="h2")
    with pytest.raises(ValueError, match="layer_bits must be name=bits pairs"):
        chosen.replace(layer_bits="fc1=2,fc2=9")  # above max_bits
    with pytest.raises(ValueError, match="and no BSQ epochs"):
        chosen.replace(bsq_epochs=3)
    with pytest.raises(ValueError, match="for a run of finetune epochs"):
        chosen.replace(finetune_epochs=0)  # it would train a float model and drop the bits without a word
    with pytest.raises(ValueError, match="name=bits pairs"):
        chosen.replace(layer_bits="fc1=2,,fc3=6")
