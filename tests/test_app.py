"""Every app page through streamlit's AppTest: no exception, and the main widget changes the view."""
import json
import logging
import math
import shutil
import sys
import time

import pandas as pd
import pytest
from streamlit.logger import get_logger
from streamlit.testing.v1 import AppTest

from bsq_explore.analysis import featured
from bsq_explore.catalog import finished_bsq, list_runs, sweep_table
from bsq_explore.runs import load_run

from conftest import shown
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


def test_the_landing_page_explains_bsq_on_a_shipped_run_and_links_every_page(app):
    at = AppTest.from_file(MAIN, default_timeout=60).run()  # the default page
    assert not at.exception and at.title[0].value == "Watch bits die"
    text = " ".join(m.value for m in at.markdown)
    for words in ("bit planes", "penalty", "removed", "alpha", "density", "grey", "norm", "compression"):
        assert words in text, words
    table = list_runs(EXAMPLES)
    assert len(charts(at)) == 1 and featured(table) in at.markdown[1].value  # the example is a real run
    linked = {link.proto.page for link in at.get("page_link")}
    pages = {p.stem for p in (EXAMPLES.parents[1] / "app" / "views").glob("*.py")} - {"home"}
    assert {page.rsplit("/", 1)[-1].removesuffix(".py") for page in linked} >= pages, linked


def test_runs_page_lists_every_run_and_the_damaged_reason(app):
    at = app("runs")
    listed = at.dataframe[0].value
    assert {"tiny", "broken", "digits-a0.3", "digits-float"} <= set(listed.name)
    status = dict(zip(listed.name, listed.status))  # digits-a1: 8.6 % on ten classes, whatever its 420x
    assert status["digits-a1"] == "at chance" and status["digits-a0.3"] == "finished"
    assert "run.json is not valid JSON" in shown(at.warning[0].value)
    before = [m.value for m in at.metric]
    at.selectbox[0].set_value("digits-a1").run()
    assert [m.value for m in at.metric] != before and at.query_params["run"] == "digits-a1"


def test_heatmap_epoch_slider_changes_the_figure_and_the_url(app):
    at = app("heatmap", run="digits-a0.3")
    first = charts(at)
    assert at.select_slider[0].value == 60 and len(at.table[0].value) > 0  # death table
    at.select_slider[0].set_value(10).run()
    assert charts(at) != first and at.query_params["epoch"] == "10"
    at.radio[0].set_value("norm").run()
    assert '"title":{"text":"norm' in charts(at)[0].replace(" ", "") and at.query_params["colour"] == "norm"
    legend = next(c.value for c in at.caption if c.value.startswith("Each row"))
    assert "norm" in legend and "few" not in legend
    deaths = at.table[0].value  # a row per layer, not per plane: 20 rows for a ResNet-20, not 160
    assert list(deaths.index) == ["fc1", "fc2", "fc3"] and list(deaths.columns) == ["bits alive", "planes removed"]
    assert "none" not in deaths["planes removed"].tolist()  # every layer of digits-a0.3 lost a plane
    kept = app("heatmap", run="cifar10-a0.05").table[0].value  # its conv1 kept all 8 bits
    assert kept["planes removed"].iloc[0] == "none" and kept["bits alive"].iloc[0] == "8"
    at.toggle[0].set_value(True).run()  # the animation replaces the still chart and the page's epoch slider
    assert len(charts(at)) == 1 and '"frames"' in charts(at)[0] and at.query_params["animate"] == "1"
    assert not at.select_slider, "a second epoch slider would disagree with the animation's"


def test_heatmap_opens_colour_and_animation_from_the_url(app):
    at = app("heatmap", run="digits-a0.3", colour="norm", animate="1")
    assert at.radio[0].value == "norm" and at.toggle[0].value is True


def test_heatmap_opens_the_epoch_from_the_url(app):
    at = app("heatmap", run="digits-a0.3", epoch="20")
    assert at.select_slider[0].value == 20


def test_url_cannot_reach_outside_the_roots(app):
    at = app("heatmap", run="../../etc")
    assert at.selectbox[0].value != "../../etc"


def test_an_unknown_run_in_the_url_says_so(app):
    at = app("heatmap", run="no-such-run")
    assert "No run named 'no-such-run'" in shown(at.warning[0].value) and at.selectbox[0].value in shown(at.warning[0].value)


def test_a_runs_root_that_is_no_folder_is_an_error_and_one_that_is_goes_in_the_url(app, tmp_path):
    at = app("runs", root=str(tmp_path / "absent"))
    assert "is not a folder" in at.sidebar.error[0].value
    assert set(at.dataframe[0].value.name) == {p.name for p in EXAMPLES.iterdir() if p.is_dir()}
    other = tmp_path / "other"
    other.mkdir()
    at.sidebar.text_input[0].set_value(str(other)).run()
    assert at.query_params["root"] == str(other) and not at.sidebar.error


def test_precision_page_follows_the_run_picker(app):
    at = app("precision", run="digits-a0.3")
    first = charts(at)
    assert len(first) == 3
    at.selectbox[0].set_value("digits-a0.05").run()
    assert charts(at) != first


def test_sweep_page_alpha_picker_opens_that_heatmap(app):
    at = app("sweep", sweep="digits")  # pareto, the picked run's heatmap, its Hessian twin's bits
    assert at.selectbox[0].value == "digits" and len(charts(at)) == 3
    verdict = at.table[0].value  # BSQ against each uniform baseline, computed from the runs
    assert [shown(b) for b in verdict.index] == ["digits-u2", "digits-u3", "digits-u4", "digits-u8"]
    listed = at.table[-1].value  # every run of the sweep
    assert [shown(n) for n in listed.index] == sweep_table(list_runs(EXAMPLES), "digits").name.tolist()
    assert "reason" not in listed, "no column that is empty in every row"
    table = list_runs(EXAMPLES)
    assert at.selectbox[1].value == featured(table[table.sweep == "digits"])  # not alpha 0, the least interesting
    assert at.query_params["alpha"] == f"{table.set_index('name').alpha[at.selectbox[1].value]:g}"
    heat = charts(at)[1]  # right under the pareto chart: a click there shows its run on the same screen
    assert '"type":"heatmap"' in heat.replace(" ", "")
    at.selectbox[1].set_value("digits-a0.1").run()
    assert charts(at)[1] != heat and at.query_params["sweep"] == "digits" and at.query_params["alpha"] == "0.1"


def test_sweep_page_draws_every_alphas_bits_per_layer_on_request(app):
    at = app("sweep", sweep="digits")
    assert not any("final precision per layer" in c for c in charts(at))
    at.toggle[0].set_value(True).run()
    bars = next(c for c in charts(at) if "final precision per layer" in c)
    alphas = finished_bsq(sweep_table(list_runs(EXAMPLES), "digits")).alpha
    assert len(json.loads(bars)["data"]) == len(alphas) and at.query_params["layers"] == "1"  # a bar per alpha
    at = app("sweep", sweep="cifar10", layers="1")  # alphas 0.1 and up empty layers of the last stage: no bar
    assert any("final precision per layer" in c for c in charts(at))
    assert any(t.value.startswith("No bar: that alpha left the layer 0 bits") for t in at.caption)


def test_sweep_page_states_the_schedule_of_its_bsq_runs_not_of_its_float_run(app):
    at = app("sweep", sweep="digits")
    config = load_run(EXAMPLES / "digits-a0.3").config  # the shipped digits sweep: 30 + 40 + 20 epochs
    schedule = f"{config.pretrain_epochs} float + {config.bsq_epochs} BSQ + {config.finetune_epochs} finetune epochs"
    assert any(schedule in shown(t.value) for t in at.caption), [t.value for t in at.caption]
    at = app("sweep", sweep="fashion")
    assert any("20 float + 12 BSQ + 4 finetune epochs" in shown(t.value) for t in at.caption)
    captions = [shown(t.value) for t in app("sweep", sweep="cifar10").caption]
    assert any("resnet20 on cifar10 (a folder of images), all training images, 80 float + 11 BSQ" in c for c in captions)
    assert not any("folder:" in c for c in captions), "a path of this checkout means nothing to a class"


def test_sweep_page_states_its_verdict_in_a_sentence_computed_from_its_runs(app):
    from bsq_explore.analysis import verdict_sentence

    at = app("sweep", sweep="fashion")
    sweep = sweep_table(list_runs(EXAMPLES), "fashion")
    expected, chosen = verdict_sentence(sweep), verdict_sentence(sweep, "hessian")
    assert expected.startswith("BSQ is as accurate as uniform 3-, 4- and 8-bit")
    assert chosen.startswith("Hessian is as accurate as uniform 3-, 4- and 8-bit")  # its twins at the same sizes
    assert shown(at.markdown[0].value).startswith(f"**{expected}** At the same size, BSQ is more accurate")
    assert f"**{chosen}**" in [shown(m.value) for m in at.markdown]  # over the twins' own table
    tables = [t.value for t in at.table]  # BSQ, then the twins, against the baselines; then BSQ beside its twins
    assert [shown(n) for n in tables[1].index] == ["fashion-u1", "fashion-u2", "fashion-u3", "fashion-u4", "fashion-u8"]
    assert shown(tables[1]["smallest as good"].iloc[2]) == "fashion-h0.02"  # beside uniform 3-bit
    assert shown(tables[2]["Hessian twin"].iloc[0]) == "fashion-h0"
    digits = [shown(m.value) for m in app("sweep", sweep="digits").markdown]
    assert any(m.startswith("**Hessian is as accurate as uniform") for m in digits)


def test_sweep_page_opens_the_alpha_in_the_url(app):
    at = app("sweep", sweep="digits", alpha="0.25")
    assert at.selectbox[1].value == "digits-a0.25"


def test_a_click_on_a_uniform_point_keeps_the_alpha_and_one_on_a_bsq_point_picks_it():
    def page():
        import streamlit as st

        from bsq_explore import dashboard
        from bsq_explore.catalog import list_runs
        from bsq_explore.paths import EXAMPLES

        table = list_runs(EXAMPLES)
        st.session_state.setdefault("clicks", [])
        dashboard.pick_alpha(table[table.sweep == "digits"], st.session_state["clicks"])

    at = AppTest.from_function(page, default_timeout=30).run()
    at.selectbox[0].set_value("digits-a0.1").run()
    at.session_state["clicks"] = ["digits-u2"]  # the pareto chart's selection: a uniform baseline
    at.run()
    assert at.selectbox[0].value == "digits-a0.1" and at.query_params["alpha"] == "0.1"
    at.session_state["clicks"] = ["digits-a0.4"]
    at.run()
    assert at.selectbox[0].value == "digits-a0.4" and at.query_params["alpha"] == "0.4"


def test_compare_page_shows_both_runs(app):
    at = app("compare", run="digits-a0.3", other="digits-a0.1")
    first = charts(at)
    assert len(first) == 3
    for table, name in zip(at.table, ("digits-a0.3", "digits-a0.1")):  # cells escaped for st.table's markdown
        final = load_run(EXAMPLES / name).final_layers()
        assert [shown(cell) for cell in table.value.index] == final.layer.tolist()
        assert table.value["final bits"].tolist() == final.nbits.astype(str).tolist()
    at.selectbox[1].set_value("digits-a0.4").run()
    assert charts(at)[1] != first[1] and charts(at)[0] == first[0]


def test_what_if_slider_changes_accuracy_and_size(app):
    at = app("whatif", run="digits-a0.3")
    assert [m.delta for m in at.metric][:2] == ['', '']  # nothing changed: no arrow, no colour
    assert at.metric[2].proto.direction == at.metric[2].proto.MetricDirection.NONE  # a size, not a change: no arrow
    before = {m.label: m.value for m in at.metric}
    fc1 = next(s for s in at.slider if s.label == "fc1")
    fc1.set_value(0).run()
    after = {m.label: m.value for m in at.metric}
    accuracy = "test accuracy (359 images)"  # digits has 359 test images, fewer than the sample: all of them
    assert after["average bits"] != before["average bits"] and after[accuracy] != before[accuracy]
    assert after[accuracy].endswith(" %") and "points" in [m for m in at.metric][0].delta
    assert "1 standard error is" in at.caption[-1].value


def test_what_if_shows_emptied_layers_and_an_empty_model_without_inf(app):
    at = app("whatif", run="digits-a1")  # training emptied fc1 and fc2
    assert [s.label for s in at.slider] == ["fc3"]
    assert sum("0 bits: training emptied it" in m.value for m in at.markdown) == 2
    at.slider[0].set_value(0).run()
    packed = next(m for m in at.metric if m.label == "packed weights")
    assert packed.delta == "no weight left" and "inf" not in packed.delta


def test_what_if_says_a_float_run_has_nothing_to_drop(app):
    at = app("whatif", run="digits-float")
    assert "float model" in shown(at.info[0].value) and "not finished" not in shown(at.info[0].value)


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
    assert not at.exception and "started from-app" in shown(at.success[0].value)
    for _ in range(120):  # the process trains in the background; the page only reads its folder
        if (tmp_path / "from-app" / "model.pt").exists():
            break
        time.sleep(0.5)
    time.sleep(1)
    at.run()
    assert "finished" in at.get("progress")[0].proto.text and "test accuracy" in at.get("progress")[0].proto.text
    assert any("from-app finished:" in shown(s.value) and " %" in shown(s.value) for s in at.success), \
        [s.value for s in at.success]
    assert any(link.proto.query_string == "run=from-app" for link in at.get("page_link"))


def test_train_page_name_follows_alpha_until_typed_and_the_typed_name_is_used(app, tmp_path):
    at = app("train")
    name = lambda: next(t for t in at.text_input if t.label == "run name")  # noqa: E731
    assert name().value == "digits-mlp-a0.16-app"  # the preset's own alpha
    at.number_input[0].set_value(0.1).run()
    assert name().value == "digits-mlp-a0.1-app", "the default name follows alpha"
    name().set_value("my-custom-run").run()
    at.number_input[0].set_value(0.2).run()
    at.number_input[1].set_value(1).run()
    assert name().value == "my-custom-run"
    at.button[0].click().run()
    assert "started my-custom-run" in shown(at.success[0].value) and (tmp_path / "my-custom-run").exists() or \
        any("my-custom-run" in shown(s.value) for s in at.success)


def test_train_page_stops_a_run_and_keeps_its_epochs(app, tmp_path):
    at = app("train")
    next(t for t in at.text_input if t.label == "run name").set_value("long").run()
    at.button[0].click().run()
    for _ in range(120):  # until it has written an epoch
        if (tmp_path / "long" / "metrics.parquet").exists():
            break
        time.sleep(0.25)
    at.run()
    assert at.get("progress") and "long: running" in at.get("progress")[0].proto.text
    next(b for b in at.button if b.label == "stop").click().run()
    for _ in range(120):
        run = load_run(tmp_path / "long")
        if run.info["status"] != "running":
            break
        time.sleep(0.25)
    assert run.info["status"] == "stopped" and len(run.metrics) >= 1
    assert list_runs(tmp_path).set_index("name").loc["long", "reason"].startswith("stopped before it finished")


def test_compare_page_opens_two_different_runs_by_default(app):
    at = app("compare")
    assert at.selectbox[0].value != at.selectbox[1].value
    assert len(charts(at)) == 3, "the second run by default is one with bit frames too"


def flat(node):
    """Every element under a node of AppTest's tree, in page order."""
    children = getattr(node, "children", None)
    if not children:
        return [node]
    return [leaf for key in sorted(children) for leaf in flat(children[key])]


def test_compare_epoch_choice_sits_above_the_heatmaps_it_controls(app):
    at = app("compare", run="digits-a0.3", other="digits-a0.1")
    kinds = [getattr(e, "type", type(e).__name__) for e in flat(at.main)]
    assert "plotly_chart" in kinds and kinds.index("radio") < kinds.index("plotly_chart"), kinds
    end = charts(at)
    at.radio[0].set_value("end of BSQ").run()
    assert charts(at)[:2] != end[:2] and at.query_params["epoch"] == "end of BSQ"


def test_an_empty_runs_root_says_how_to_make_a_first_run(tmp_path, monkeypatch):
    from bsq_explore import dashboard

    monkeypatch.setenv("BSQ_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(dashboard, "EXAMPLES", tmp_path / "no-examples")
    for page in ("runs", "heatmap", "whatif"):
        at = AppTest.from_file(MAIN, default_timeout=60)
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception and "bsq-explore train" in shown(at.info[0].value)


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


@pytest.fixture
def stub_launch(monkeypatch):
    """jobs.launch replaced by a process that sleeps as long as the test, with the command line of
    `python -m bsq_explore.cli train` (what the run limit counts): nothing trains."""
    import subprocess
    import tempfile

    import psutil
    import streamlit as st

    from bsq_explore import jobs

    st.cache_resource.clear()  # the page's server-wide list of launched runs starts empty
    for child in psutil.Process().children():  # runs an earlier test started count against the limit
        try:
            if "bsq_explore.cli" in child.cmdline():
                child.kill()
                child.wait()
        except psutil.Error:  # gone, or a zombie (exited, not yet reaped): no run to count
            continue
    started = []

    def launch(config, runs, name):
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "bsq_explore.cli",
                                    "train", "--name", name])
        process.root = runs
        started.append(process)
        return jobs.Launch(name, process, tempfile.TemporaryFile())
    monkeypatch.setattr(jobs, "launch", launch)
    yield started
    for process in started:
        process.kill()
        process.wait()


def test_train_page_starts_at_most_the_configured_number_of_runs_at_once(app, stub_launch, monkeypatch):
    import streamlit as st

    monkeypatch.setenv("BSQ_APP_RUNS", "2")
    at = app("train")
    for i in range(4):  # four quick clicks, each after a cache clear (any visitor can send clear_cache)
        st.cache_resource.clear()
        st.cache_data.clear()
        next(t for t in at.text_input if t.label == "run name").set_value(f"r{i}").run()
        at.button[0].click().run()
    assert len(stub_launch) == 2, ([e.value for e in at.error], [s.value for s in at.success])
    assert "2 run(s) are training now" in shown(at.error[0].value) and "BSQ_APP_RUNS" in shown(at.error[0].value)
    stub_launch[0].kill()
    stub_launch[0].wait()
    at.button[0].click().run()
    assert len(stub_launch) == 3, "a slot frees when a run ends"


def test_train_page_writes_only_under_the_servers_runs_root_whatever_the_url_says(app, stub_launch, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setenv("BSQ_APP_RUNS", "5")
    (tmp_path / "elsewhere").mkdir()
    for i, root in enumerate((EXAMPLES, EXAMPLES / "digits-a0.3", tmp_path / "elsewhere")):
        at = app("train", root=str(root))
        next(t for t in at.text_input if t.label == "run name").set_value(f"r{i}").run()
        at.button[0].click().run()
        assert not at.error, [e.value for e in at.error]
    assert [p.root for p in stub_launch] == [tmp_path] * 3  # $BSQ_RUNS of the server (the app fixture's)


def test_train_page_shows_why_a_run_did_not_start(app, tmp_path, monkeypatch):
    monkeypatch.setenv("BSQ_DATA", str(tmp_path / "no-data"))  # mnist is not on disk: the process fails at once
    at = app("train")
    at.selectbox[0].set_value("mnist-lenet5").run()
    at.button[0].click().run()
    for _ in range(120):
        at.run()
        if at.error:
            break
        time.sleep(0.5)
    assert "did not start" in shown(at.error[0].value) and "mnist is not under" in shown(at.error[0].value)


def test_home_page_states_every_sweeps_verdict_and_whether_it_is_final(app, tmp_path):
    shutil.copytree(EXAMPLES / "digits-a0.3", tmp_path / "digits-a0.3-copy")  # a run of the digits sweep...
    info = json.loads((tmp_path / "digits-a0.3-copy" / "run.json").read_text())
    (tmp_path / "digits-a0.3-copy" / "run.json").write_text(json.dumps({**info, "status": "failed"}))  # ...not done
    said = [shown(m.value) for m in app("home").markdown]
    for sweep in ("cifar10", "fashion"):  # sentences of their own: test_analysis checks them against hand-worked tables
        assert any(m.startswith(f"**{sweep}**: BSQ is as accurate") or m.startswith(f"**{sweep}**: No BSQ run")
                   for m in said), sweep
    assert "**fashion**: BSQ is as accurate as uniform 3-, 4- and 8-bit quantization (within half a point) and 1.23x, " \
           "1.64x and 3.28x smaller; no BSQ run is as accurate as uniform 1- and 2-bit with fewer bits." in said
    digits = len(sweep_table(list_runs(EXAMPLES), "digits")) + 1
    assert any(m.startswith("**digits**: BSQ is as accurate") and
               m.endswith(f"Not final: 1 of its {digits} runs has not finished.") for m in said)


GARBAGE = {"run": "../" * 50, "other": "x" * 5000, "sweep": "²", "alpha": "-nan", "epoch": "--5", "colour": "\x00",
           "animate": "1e999", "root": "/dev/null/x"}


@pytest.mark.parametrize("page", ["home", "runs", "heatmap", "precision", "sweep", "compare", "whatif", "train",
                                  "playground"])
def test_every_page_takes_any_query_parameters_without_an_exception(app, page):
    app(page, **GARBAGE)  # app() asserts no exception


def test_sweep_page_takes_two_runs_of_one_alpha(app, tmp_path):
    shutil.copytree(EXAMPLES / "digits-a0.3", tmp_path / "digits-a0.3-copy")  # a copied run folder
    at = app("sweep", sweep="digits", layers="1")  # every alpha's bars: two runs of alpha 0.3
    assert len(charts(at)) == 4 and not at.exception


INJECTION = "x ![p](http://127.0.0.1:9999/a.png) [re-login](http://127.0.0.1:9999/phish) www.evil.example $x$"


def rendered(markdown: str) -> str:
    """The HTML a CommonMark renderer with GFM autolinks makes of a message (streamlit's markdown is
    CommonMark with GFM): the oracle of what a visitor would see."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"linkify": True}).enable(["linkify"]).render(markdown)


def messages(at) -> list[str]:
    return [m.value for kind in ("error", "warning", "info", "success", "caption", "markdown") for m in at.get(kind)]


@pytest.mark.parametrize("page, params", [
    ("heatmap", dict(run=INJECTION)), ("runs", dict(root=INJECTION)), ("sweep", dict(sweep=INJECTION)),
    ("compare", dict(run="digits-a0.3", other=INJECTION))])
def test_text_from_the_url_is_shown_as_text_never_as_a_link_or_an_image(app, page, params):
    at = app(page, **params)
    shown_texts = messages(at) + [e.value for e in at.sidebar.error]
    assert any("127.0.0.1:9999" in shown(m) for m in shown_texts) or page == "sweep", "the text is shown"
    for message in shown_texts:
        html = rendered(message)
        assert "<a " not in html and "<img" not in html, message


def test_text_from_a_run_folder_is_shown_as_text(app, tmp_path):
    import json

    shutil.copytree(tmp_path / "tiny", tmp_path / "evil")
    info = json.loads((tmp_path / "evil" / "run.json").read_text())
    info["config"]["model"] = INJECTION  # an unknown model: the run is damaged, and its reason quotes the model
    (tmp_path / "evil" / "run.json").write_text(json.dumps(info))
    bad = tmp_path / "tiny-html"
    shutil.copytree(tmp_path / "tiny", bad)
    layers = pd.read_parquet(bad / "layers.parquet")
    layers["layer"] = '<a href="http://127.0.0.1:9999/phish">fc1</a>'
    layers.to_parquet(bad / "layers.parquet")
    at = app("runs")
    assert any("evil" in shown(m) for m in messages(at))
    for message in messages(at):
        html = rendered(message)
        assert "<a " not in html and "<img" not in html, message
    at = app("precision", run="tiny-html")  # a layer name that is markup: the run is damaged, nothing drawn
    assert not charts(at) and "has a layer that no run writes" in shown(at.error[0].value)


def test_served_read_only_the_app_has_no_train_page(app, monkeypatch):
    monkeypatch.setenv("BSQ_APP_RUNS", "0")
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.switch_page("views/train.py").run()
    assert "Could not find page: `views/train.py`" in at.exception[0].value and not at.button
    monkeypatch.setenv("BSQ_APP_RUNS", "1")
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.switch_page("views/train.py").run()
    assert not at.exception and at.title[0].value == "Train"


def test_what_if_scores_a_choice_on_every_test_image_on_demand(app):
    from bsq_explore.analysis import WhatIf

    at = app("whatif", run="fashion-a0.02")
    assert not any(m.value.startswith("On all") for m in at.markdown)  # only once asked
    next(s for s in at.slider if s.label == "fc1").set_value(1).run()
    next(b for b in at.button if b.label == "score this choice on every test image").click().run()
    expected = WhatIf(load_run(EXAMPLES / "fashion-a0.02"), images=0).evaluate({"fc1": 1})["test_acc"]
    line = next(shown(m.value) for m in at.markdown if m.value.startswith("On all"))
    assert line.startswith(f"On all 10,000 test images: **{100 * expected:.1f} %**"), line


def test_train_page_takes_the_presets_alpha_and_epochs_and_says_how_long_a_run_takes(app):
    from bsq_explore.catalog import epoch_seconds
    from bsq_explore.config import preset
    from bsq_explore.dashboard import duration

    at = app("train")
    at.selectbox[0].set_value("fashion-lenet5").run()
    fashion = preset("fashion-lenet5")  # alpha 0.02 and 12 BSQ epochs, not the digits preset's 0.16 and 40
    assert [n.value for n in at.number_input] == [fashion.alpha, fashion.bsq_epochs]
    assert at.text_input[0].value == "fashion-lenet5-a0.02-app"
    at.selectbox[0].set_value("cifar10-resnet20").run()
    paper = preset("cifar10-resnet20")
    seconds = epoch_seconds(EXAMPLES, "resnet20", "folder:x/cifar10")  # the shipped ResNet-20's epochs
    text = shown(at.caption[0].value)
    assert f"{paper.epoch_count()} epochs in all, about {duration(paper.epoch_count() * seconds)}" in text
    assert duration(paper.epoch_count() * seconds).endswith(("hours", "days"))  # the paper's recipe on a CPU: say so


def test_durations_read_at_a_glance():
    from bsq_explore.dashboard import duration

    assert [duration(s) for s in (40, 119, 720, 7200 + 1800, 3 * 86400)] == ["40 s", "119 s", "12 min", "2.5 hours",
                                                                             "3 days"]


def test_sweep_tables_show_a_run_with_no_weight_left_as_infinitely_compressed_and_a_missing_value_as_a_dash():
    from bsq_explore.dashboard import _RUN_COLUMNS, _format_columns

    rows = pd.DataFrame(dict(name=["x-a9", "x-u2"], test_acc=[0.1, 0.885], bsq_acc=[0.1, None],
                             compression=[math.inf, 16.0], alpha=[9.0, float("nan")]))
    shown_rows = _format_columns(rows, _RUN_COLUMNS)
    assert shown_rows.to_dict("list") == {"run": ["x-a9", "x-u2"], "alpha": ["9", "–"], "accuracy": ["10.0 %", "88.5 %"],
                                          "after BSQ": ["10.0 %", "–"], "compression": ["∞", "16.0x"]}


def test_sweep_page_without_a_uniform_baseline_says_so_and_draws_no_empty_table(app, tmp_path):
    from bsq_explore.sweep import sweep

    from conftest import TINY

    sweep("digits-mlp", [0.3], runs=tmp_path, name="nob", uniform_bits=[], progress=False,
          **{k: v for k, v in TINY.items() if k != "alpha"})
    at = app("sweep", sweep="nob")
    assert "no finished uniform baseline" in shown(at.markdown[0].value)
    assert not at.table[:-1] and [shown(h.value) for h in at.subheader] == ["Every run of the sweep"]


def test_sweep_page_puts_each_bsq_run_beside_its_hessian_twin(app, tmp_path):
    from bsq_explore.analysis import twins, twins_sentence
    from bsq_explore.sweep import sweep

    from conftest import TINY

    table = sweep("digits-mlp", [0.0, 0.3], runs=tmp_path, name="hw", uniform_bits=[3], progress=False, hessian=2,
                  **{k: v for k, v in TINY.items() if k != "alpha"})
    pairs = twins(table)
    assert len(pairs) == 2
    at = app("sweep", sweep="hw", alpha="0.3")
    assert shown(at.markdown[0].value).endswith(twins_sentence(pairs))
    shown_pairs = next(t.value for t in at.table if "Hessian twin" in t.value.columns)
    assert [shown(h) for h in shown_pairs["Hessian twin"]] == ["hw-h0", "hw-h0.3"]
    assert [shown(a) for a in shown_pairs["twin accuracy"]] == [f"{100 * a:.1f} %" for a in pairs.hessian_test_acc]
    assert any("where the two methods put the bits" in c for c in charts(at))
    link = next(p for p in at.get("page_link") if "Hessian twin" in p.proto.label)
    assert "hw-h0.3" in link.proto.label
