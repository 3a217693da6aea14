"""Every app page through streamlit's AppTest: no exception, and the main widget changes the view."""
import shutil
import time

import logging

import pandas as pd
import pytest
from streamlit.logger import get_logger
from streamlit.testing.v1 import AppTest

from bsq_explore.dashboard import featured
from test_sweep import EXAMPLES


class BareModeChatter(logging.Filter):
    """Drops streamlit's notes that a cached function or st call ran outside a script run (the tests
    import the dashboard directly); every other streamlit message still prints."""

    def filter(self, record):
        return "bare mode" not in record.getMessage() and "No runtime found" not in record.getMessage()


for _name in ("streamlit.runtime.scriptrunner_utils.script_run_context", "streamlit.runtime.caching.cache_data_api"):
    get_logger(_name).addFilter(BareModeChatter())

MAIN = str(EXAMPLES.parents[1] / "app" / "main.py")


@pytest.fixture
def app(tmp_path, monkeypatch, tiny_run):
    """The app over the shipped examples plus a runs root holding a tiny run and a damaged one."""
    shutil.copytree(tiny_run, tmp_path / "tiny")
    shutil.copytree(tiny_run, tmp_path / "broken")
    (tmp_path / "broken" / "run.json").write_text("{oops")
    monkeypatch.setenv("BSQ_RUNS", str(tmp_path))

    def open_page(page, **params):
        at = AppTest.from_file(MAIN, default_timeout=60)
        for key, value in params.items():
            at.query_params[key] = value
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at
    return open_page


def charts(at):
    return [c.proto.spec for c in at.get("plotly_chart")]


def test_runs_page_lists_every_run_and_the_damaged_reason(app):
    at = app("runs")
    listed = at.dataframe[0].value
    assert {"tiny", "broken", "digits-a0.3", "digits-float"} <= set(listed.name)
    assert "run.json is not valid JSON" in at.warning[0].value
    before = [m.value for m in at.metric]
    at.selectbox[0].set_value("digits-a1").run()
    assert [m.value for m in at.metric] != before and at.query_params["run"] == "digits-a1"


def test_heatmap_epoch_slider_changes_the_figure_and_the_url(app):
    at = app("heatmap", run="digits-a0.3")
    first = charts(at)
    assert at.select_slider[0].value == 60 and len(at.dataframe[0].value) > 0  # death table
    at.select_slider[0].set_value(10).run()
    assert charts(at) != first and at.query_params["epoch"] == "10"
    at.radio[0].set_value("norm").run()
    assert '"title":{"text":"norm"}' in charts(at)[0].replace(" ", "")


def test_heatmap_opens_the_epoch_from_the_url(app):
    at = app("heatmap", run="digits-a0.3", epoch="20")
    assert at.select_slider[0].value == 20


def test_url_cannot_reach_outside_the_roots(app):
    at = app("heatmap", run="../../etc")
    assert at.selectbox[0].value != "../../etc"


def test_precision_page_follows_the_run_picker(app):
    at = app("precision", run="digits-a0.3")
    first = charts(at)
    assert len(first) == 3
    at.selectbox[0].set_value("digits-a0.05").run()
    assert charts(at) != first


def test_sweep_page_alpha_picker_opens_that_heatmap(app):
    at = app("sweep", sweep="digits")
    assert at.selectbox[0].value == "digits" and len(charts(at)) == 3
    verdict = at.dataframe[1].value  # BSQ against each uniform baseline, computed from the runs
    assert verdict.baseline.tolist() == ["digits-u2", "digits-u3", "digits-u4", "digits-u8"]
    heat = charts(at)[2]
    at.selectbox[1].set_value("digits-a0.1").run()
    assert charts(at)[2] != heat and at.query_params["sweep"] == "digits"


def test_compare_page_shows_both_runs(app):
    at = app("compare", run="digits-a0.3", other="digits-a0.1")
    first = charts(at)
    assert len(first) == 3
    at.selectbox[1].set_value("digits-a0.4").run()
    assert charts(at)[1] != first[1] and charts(at)[0] == first[0]


def test_what_if_slider_changes_accuracy_and_size(app):
    at = app("whatif", run="digits-a0.3")
    before = {m.label: m.value for m in at.metric}
    fc1 = next(s for s in at.slider if s.label == "fc1")
    fc1.set_value(0).run()
    after = {m.label: m.value for m in at.metric}
    assert after["average bits"] != before["average bits"] and after["test accuracy"] != before["test accuracy"]


def test_playground_nbits_slider_changes_the_planes(app):
    at = app("playground")
    first = charts(at)
    nbits = next(s for s in at.slider if s.label == "nbits")
    nbits.set_value(2).run()
    assert charts(at) != first and charts(at)[0].count('"type":"heatmap"') < first[0].count('"type":"heatmap"')


def test_train_page_starts_a_background_run_and_watches_it(app, tmp_path):
    at = app("train")
    at.selectbox[0].set_value("digits-mlp")
    at.number_input[1].set_value(2)
    name = next(t for t in at.text_input if t.label == "run name")
    name.set_value("from-app")
    at.button[0].click().run()
    assert not at.exception and "started from-app" in at.success[0].value
    for _ in range(120):  # the process trains in the background; the page only reads its folder
        if (tmp_path / "from-app" / "model.pt").exists():
            break
        time.sleep(0.5)
    at.run()
    assert "finished" in at.get("progress")[0].proto.text


def test_compare_page_opens_two_different_runs_by_default(app):
    at = app("compare")
    assert at.selectbox[0].value != at.selectbox[1].value


def test_an_empty_runs_root_says_how_to_make_a_first_run(tmp_path, monkeypatch):
    from bsq_explore import dashboard

    monkeypatch.setenv("BSQ_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(dashboard, "EXAMPLES", tmp_path / "no-examples")
    for page in ("runs", "heatmap", "whatif"):
        at = AppTest.from_file(MAIN, default_timeout=60)
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception and "bsq-explore train" in at.info[0].value


def test_the_app_opens_the_hardest_sweeps_most_compressed_run_near_its_float_model():
    def run(name, sweep, kind, acc, compression, status="finished"):
        return dict(name=name, sweep=sweep, kind=kind, test_acc=acc, compression=compression, status=status)
    runs = pd.DataFrame([run("d-float", "d", "float", 0.98, 1), run("d-a1", "d", "bsq", 0.97, 18),
                         run("f-float", "f", "float", 0.91, 1), run("f-a1", "f", "bsq", 0.905, 6),
                         run("f-a2", "f", "bsq", 0.895, 11), run("f-a3", "f", "bsq", 0.70, 40),
                         run("c-float", "c", "float", 0.60, 1, "running")])  # no BSQ run of c yet
    assert featured(runs) == "f-a2"  # fashion is harder than digits; f-a3 is more than 2 points off
    assert featured(runs[runs.sweep != "f"]) == "d-a1"
    alone = pd.DataFrame([run("x", None, "bsq", 0.9, 5), run("y", None, "bsq", 0.85, 9)])
    assert featured(alone) == "x"
