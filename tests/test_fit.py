"""fit(): a model and data of one's own through every stage, into a run folder the kit reads."""
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from streamlit.testing.v1 import AppTest
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bsq_explore import data
from bsq_explore.cli import main
from bsq_explore.config import BSQConfig
from bsq_explore.export import load_quantized
from bsq_explore.layers import BitLayer
from bsq_explore.paths import REPO
from bsq_explore.runs import load_run
from bsq_explore.train import evaluate, fit

from conftest import TINY, comparable, shown

MAIN = str(REPO / "app" / "main.py")
CONFIG = BSQConfig(**TINY, batch_size=64)


class TinyNet(nn.Module):
    """Not a kit model: a conv, a pooling and a head, forward written by hand."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.head(torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1))


@pytest.fixture(scope="module")
def digits():
    ds = data.load("digits")
    return (ds.train_x[:512], ds.train_y[:512]), (ds.test_x[:200], ds.test_y[:200])


def loader(split):
    return DataLoader(TensorDataset(*split), batch_size=50)


def test_fit_trains_a_model_of_ones_own_from_dataloaders_through_every_stage(tmp_path, digits):
    torch.manual_seed(0)
    model = TinyNet()
    path = fit(model, loader(digits[0]), loader(digits[1]), CONFIG, runs=tmp_path, name="mine")
    run = load_run(path)
    assert run.info["status"] == "finished" and run.config.model == "custom:TinyNet"
    assert run.metrics.stage.unique().tolist() == ["pretrain", "bsq", "finetune"]
    assert sorted(run.final_layers().layer) == ["conv", "head"] and run.summary["avg_bits"] < 8
    assert not any(isinstance(m, BitLayer) for m in model.modules()), "the caller's model stays float"
    trained = load_quantized(TinyNet(), run.read_model())  # model.pt round trip: the recorded score
    assert evaluate(trained, *digits[1]) == pytest.approx(run.summary["test_acc"], abs=1e-9)
    assert run.info["data"]["shape"] == [1, 8, 8] and len(run.info["data"]["classes"]) == 10


def test_fit_resumes_a_stopped_run_to_the_frames_of_one_that_never_stopped(tmp_path, digits):
    torch.manual_seed(0)
    model = TinyNet()
    whole = load_run(fit(model, *digits, CONFIG, runs=tmp_path, name="whole"))

    def stop(event):
        if event.stage == "bsq" and event.epoch == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        fit(model, *digits, CONFIG, runs=tmp_path, name="stopped", callbacks=[stop])
    assert load_run(tmp_path / "stopped").info["status"] == "stopped"
    with pytest.raises(ValueError, match="another config: alpha"):
        fit(model, *digits, CONFIG.replace(alpha=0.5), runs=tmp_path, name="stopped")
    events = []
    resumed = load_run(fit(model, *digits, CONFIG, runs=tmp_path, name="stopped", callbacks=[events.append]))
    assert (events[0].stage, events[0].epoch) == ("bsq", 3)  # on from the checkpoint of bsq epoch 2, not afresh
    for kind in ("metrics", "bits", "layers"):
        pd.testing.assert_frame_equal(comparable(getattr(resumed, kind)), comparable(getattr(whole, kind)))
    with pytest.raises(FileExistsError, match="has finished"):
        fit(model, *digits, CONFIG, runs=tmp_path, name="stopped")


def test_a_fit_run_is_read_by_the_cli_and_the_app(tmp_path, digits, monkeypatch, capsys):
    torch.manual_seed(0)
    fit(TinyNet(), *digits, CONFIG, runs=tmp_path, name="mine")
    assert main(["show", "mine", "--runs", str(tmp_path)]) == 0 and "custom:TinyNet" in capsys.readouterr().out
    assert main(["export", "mine", "--out", str(tmp_path / "m.pt"), "--runs", str(tmp_path)]) == 0
    assert main(["export", "mine", "--format", "qonnx", "--out", str(tmp_path / "m.onnx"), "--runs", str(tmp_path)]) == 2
    assert "was given to fit(): the kit cannot build it" in capsys.readouterr().err
    monkeypatch.setenv("BSQ_RUNS", str(tmp_path))
    for page, shows in [("views/heatmap.py", "plotly_chart"), ("views/precision.py", "plotly_chart")]:
        at = AppTest.from_file(MAIN, default_timeout=60)
        at.query_params["run"] = "mine"
        at.switch_page(page).run()
        assert not at.exception and at.get(shows), page
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.query_params["run"] = "mine"
    at.switch_page("views/whatif.py").run()  # the kit cannot rebuild your model: one line, no traceback
    assert not at.exception and "was given to fit(), so the kit cannot load it" in shown(at.error[0].value)


@pytest.mark.parametrize("train, says", [((torch.zeros(4, 1, 8, 8), torch.zeros(4)), "integer labels"),
                                         ((torch.zeros(4, 1, 8, 8), torch.zeros(3, dtype=torch.long)), "as many"),
                                         ((torch.zeros(4, 1, 9, 9), torch.zeros(4, dtype=torch.long)), "differ in shape"),
                                         ([1, 2, 3], "DataLoader of (x, y) batches"),
                                         ([{"x": torch.zeros(2, 1, 8, 8), "y": torch.zeros(2)}], "(x, y) batches")])
def test_fit_refuses_bad_data_in_one_line_before_any_folder(tmp_path, digits, train, says):
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")) as err:
        fit(TinyNet(), train, digits[1], CONFIG, runs=tmp_path, name="bad")
    assert "\n" not in str(err.value) and not (tmp_path / "bad").exists()


def test_fit_resumes_only_on_data_of_the_same_shape_and_classes(tmp_path, digits):
    def stop(event):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        fit(TinyNet(), *digits, CONFIG, runs=tmp_path, name="s", callbacks=[stop])
    (x, y), test = digits
    with pytest.raises(ValueError, match="other data: it trained on items of shape \\[1, 8, 8\\] in 10 classes"):
        fit(TinyNet(), (x, y % 5), (test[0], test[1] % 5), CONFIG, runs=tmp_path, name="s")


def test_the_cli_refuses_a_custom_model_before_any_data(tmp_path, capsys):
    assert main(["train", "--model", "custom:Mine", "--runs", str(tmp_path), "--name", "c"]) == 2
    assert "train it with bsq_explore.fit" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_fit_quantizes_the_layers_its_filter_or_the_configs_float_layers_leave(tmp_path, digits):
    torch.manual_seed(0)
    by_filter = fit(TinyNet(), *digits, CONFIG, runs=tmp_path, name="f", filter_fn=lambda m, name: name != "head")
    by_config = fit(TinyNet(), *digits, CONFIG.replace(float_layers="conv"), runs=tmp_path, name="c")
    assert load_run(by_filter).final_layers().layer.tolist() == ["conv"]
    assert load_run(by_config).final_layers().layer.tolist() == ["head"]
