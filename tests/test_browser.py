"""The real app in headless Chromium: every page renders its charts and shows no exception."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bsq_explore.catalog import list_runs, sweep_table
from bsq_explore.runs import load_run

from test_sweep import EXAMPLES

CHROMIUM = "/usr/bin/chromium"
ROOT = EXAMPLES.parents[1]
# page url path -> what it shows once rendered, with the default selection
PLOT, METRIC, BUTTON = ".js-plotly-plot .main-svg", "[data-testid='stMetric']", "[data-testid='stButton']"
GRID, TABLE = "[data-testid='stDataFrame']", "[data-testid='stTable']"  # st.dataframe's grid, st.table
PAGES = {"": PLOT, "runs": METRIC, "heatmap": PLOT, "precision": PLOT, "sweep": PLOT, "compare": PLOT, "whatif": METRIC,
         "train": BUTTON, "playground": PLOT}

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_run):
    runs = tmp_path_factory.mktemp("browser_runs")
    shutil.copytree(tiny_run, runs / "tiny")
    proc, url = serve(BSQ_RUNS=str(runs))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def serve(**env) -> tuple[subprocess.Popen, str]:
    """`streamlit run app/main.py` on 127.0.0.1 with env added to this environment, once it is healthy."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"),
                             "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
                             "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=dict(os.environ, **env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail("streamlit did not become healthy in 60 s")


def test_every_page_renders_in_chromium_for_a_projector_and_offline(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1024, "height": 768})  # a projector
        outside = []  # every asset must come from the app itself: a lecture hall may be offline
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(server) and
                not r.url.startswith(("data:", "blob:")) else None)
        for path, shown in PAGES.items():
            page.goto(f"{server}/{path}")
            page.wait_for_selector("[data-testid='stMain'] h1", timeout=60_000)
            page.wait_for_selector(shown, timeout=60_000)
            # the script has finished its run once streamlit's running indicator is gone
            page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=60_000)
            page.wait_for_timeout(500)
            assert page.locator("[data-testid='stSpinner']").count() == 0, f"/{path} is still loading"
            assert page.locator("[data-testid='stException']").count() == 0, f"exception on /{path}"
            assert page.locator("[data-testid='stAppDeployButton']").count() == 0, f"a Deploy button on /{path}"
            if path in ("sweep", "heatmap"):
                sizes = page.eval_on_selector_all(".js-plotly-plot .xtick text, .js-plotly-plot .ytick text",
                                                  "els => els.map(e => parseFloat(getComputedStyle(e).fontSize))")
                assert sizes and min(sizes) >= 16, f"/{path} tick labels of {min(sizes)} px"
                fills = page.eval_on_selector_all(".js-plotly-plot .xtick text",
                                                  "els => els.map(e => getComputedStyle(e).fill)")
                assert all(f in ("rgb(26, 26, 26)", "#1a1a1a") for f in fills), fills[:3]  # dark, not grey
            captions = page.eval_on_selector_all("[data-testid='stCaptionContainer']",
                                                 "els => els.map(e => parseFloat(getComputedStyle(e).fontSize))")
            assert not captions or min(captions) >= 16, f"/{path} captions of {min(captions)} px"
            faded = page.eval_on_selector_all("[data-testid='stCaptionContainer']",
                                              "els => els.map(e => parseFloat(getComputedStyle(e).opacity))")
            assert not faded or min(faded) >= 0.8, f"/{path} captions faded to {min(faded)}: grey on a projector"
            if path == "heatmap":
                box = page.locator(".js-plotly-plot").first.bounding_box()
                assert box["width"] >= 600 and box["height"] >= 300, box
        assert not outside, outside[:5]
        browser.close()


def clear_cache(port: int) -> None:
    """What any visitor can send: a clear_cache message over the app's websocket, then a rerun,
    whose end proves the server has handled the clear (a session handles its messages in order)."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ClientState_pb2 import ClientState
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"], open_timeout=30) as ws:
        ws.send(BackMsg(clear_cache=True).SerializeToString())
        ws.send(BackMsg(rerun_script=ClientState(query_string="", page_script_hash="")).SerializeToString())
        deadline = time.time() + 60
        while ForwardMsg.FromString(ws.recv(timeout=max(deadline - time.time(), 0.1))).WhichOneof("type") \
                != "script_finished":
            pass


def test_a_visitor_who_clears_the_cache_over_the_websocket_cannot_start_more_runs_than_the_limit(tmp_path):
    import psutil
    from playwright.sync_api import sync_playwright

    server, url = serve(BSQ_RUNS=str(tmp_path), BSQ_APP_RUNS="2")
    port = int(url.rsplit(":", 1)[1])

    def training():
        return [c for c in psutil.Process(server.pid).children(recursive=True)
                if c.is_running() and c.status() != psutil.STATUS_ZOMBIE and "train" in c.cmdline()]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1024, "height": 768})
            for i in range(4):
                page.goto(f"{url}/train")  # a fresh page each time: no message left from the last click
                page.get_by_label("BSQ epochs").fill("10000")  # long enough to be training all through the test
                page.get_by_label("BSQ epochs").press("Enter")
                page.get_by_label("run name").fill(f"r{i}")
                page.get_by_label("run name").press("Enter")
                page.get_by_role("button", name="start training").click()
                page.wait_for_selector("[data-testid='stAlertContentSuccess'], [data-testid='stAlertContentError']",
                                       timeout=60_000)
                message = page.locator("[data-testid='stAlertContentSuccess'], "
                                       "[data-testid='stAlertContentError']").first.inner_text()
                assert (f"started r{i}" in message) == (i < 2), (i, message)
                clear_cache(port)
            assert "2 run(s) are training now" in message
            browser.close()
        assert len(training()) == 2, [c.cmdline() for c in training()]
    finally:
        for child in psutil.Process(server.pid).children(recursive=True):
            child.kill()
        server.terminate()
        server.wait(timeout=20)


def heaviest() -> str:
    """The run the app opens first: from the hardest shipped sweep (CIFAR-10 once its BSQ runs are in)."""
    from bsq_explore.analysis import featured
    from bsq_explore.catalog import list_runs

    return featured(list_runs(EXAMPLES))


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1024, "height": 768})  # a projector
        yield tab
        browser.close()


def drawn(page, url: str, shown: str = PLOT):
    page.goto(url)
    page.wait_for_selector(shown, timeout=120_000)
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=120_000)
    page.wait_for_timeout(800)
    return page


TABLE_PAGES = ["runs", "sweep?sweep=fashion", "sweep?sweep=digits", "sweep?sweep=cifar10", "heatmap?run={heaviest}",
               "heatmap?run=tiny", "playground"]


@pytest.mark.parametrize("path", TABLE_PAGES)
def test_every_table_shows_every_row_and_column_at_1024x768(server, page, path):
    drawn(page, f"{server}/{path.format(heaviest=heaviest())}", f"{GRID}, {TABLE}")
    page.wait_for_function(f"""() => [...document.querySelectorAll("{GRID}")]
        .every(e => e.querySelector('table') && e.querySelector('.dvn-scroller'))""", timeout=60_000)  # each grid drawn
    grids = page.eval_on_selector_all(GRID, """els => els.map(e => {
        const s = e.querySelector('.dvn-scroller'), t = e.querySelector('table');
        return {rows: +t.getAttribute('aria-rowcount'), drawn: t.querySelectorAll('tr').length,
                tall: s.scrollHeight - s.clientHeight, wide: s.scrollWidth - s.clientWidth}})""")
    for grid in grids:  # no scroll box inside a table: no row below its edge, no column cut on the right
        assert grid["drawn"] == grid["rows"] and grid["tall"] <= 1 and grid["wide"] <= 1, (path, grid)
    tables = static_tables(page)
    assert grids or tables
    for table in tables:  # a static table shows every row it has: nothing may be cut on the right
        assert table["wide"] <= 1 and table["right"] <= 1024, (path, table)
    if path.startswith("sweep"):  # its last table lists every run of the sweep
        assert tables[-1]["rows"] == len(sweep_table(list_runs(EXAMPLES), path.split("=")[1])), tables
    if path == "heatmap?run={heaviest}":  # when each plane died: a row per layer, long cells wrapped, never cut
        assert tables[0]["rows"] == load_run(EXAMPLES / heaviest()).layers.layer.nunique(), tables


def static_tables(page) -> list[dict]:
    """Each st.table on the page: its rows, how far it overflows on the right, where its right edge is."""
    return page.eval_on_selector_all(TABLE, """els => els.map(e => ({
        rows: e.querySelectorAll('tbody tr').length, wide: e.scrollWidth - e.clientWidth,
        right: e.getBoundingClientRect().right}))""")


@pytest.mark.parametrize("runs, layers", [("fashion-a0.02&other=fashion-u2", 5), ("{heaviest}&other=cifar10-a0.02", 20)])
def test_compare_shows_every_layer_of_both_runs_in_static_tables_at_1024x768(server, page, runs, layers):
    drawn(page, f"{server}/compare?run={runs.format(heaviest=heaviest())}", TABLE)
    tables = static_tables(page)
    assert len(tables) == 2
    for table in tables:  # every layer a row, nothing cut on the right
        assert table["rows"] == layers and table["wide"] <= 1 and table["right"] <= 1024, table


@pytest.mark.parametrize("run", [heaviest(), "tiny"])
def test_the_heatmap_and_its_epoch_slider_fit_the_first_screen(server, page, run):
    drawn(page, f"{server}/heatmap?run={run}")
    chart = page.locator(".js-plotly-plot").first.bounding_box()
    slider = page.locator("[data-testid='stSlider']").first.bounding_box()
    labels = page.eval_on_selector_all(".js-plotly-plot .ytick text", "els => els.map(e => e.getBoundingClientRect().bottom)")
    layers = 3 if run == "tiny" else load_run(EXAMPLES / run).layers.layer.nunique()
    assert len(labels) == layers and max(labels) <= 768, (len(labels), max(labels))  # every layer named, on screen
    assert slider["y"] + slider["height"] <= 768 and slider["y"] < chart["y"]
    assert chart["y"] + chart["height"] <= 768 + 5, chart  # the whole chart, its x axis included
    drawn(page, f"{server}/heatmap?run={run}&animate=1")
    play = page.locator(".updatemenu-button").first.bounding_box()
    labels = page.eval_on_selector_all(".js-plotly-plot .ytick text", "els => els.map(e => e.getBoundingClientRect().bottom)")
    assert play["y"] + play["height"] <= 768 and max(labels) <= 768  # play, and watch every layer while it plays


def test_what_if_shows_its_answer_above_the_sliders_on_a_real_cnn(server, page):
    drawn(page, f"{server}/whatif?run={heaviest()}", METRIC)
    metrics = page.locator(METRIC).all()
    assert len(metrics) == 3 and all(m.bounding_box()["y"] + m.bounding_box()["height"] <= 768 for m in metrics)
    sliders = page.locator("[data-testid='stSlider']").all()
    assert sliders and min(s.bounding_box()["y"] for s in sliders) > max(m.bounding_box()["y"] for m in metrics)


def test_the_sweep_page_states_the_schedule_of_its_bsq_runs(server, page):
    drawn(page, f"{server}/sweep?sweep=fashion")
    assert "20 float + 12 BSQ + 4 finetune epochs" in page.locator("[data-testid='stCaptionContainer']").first.inner_text()
