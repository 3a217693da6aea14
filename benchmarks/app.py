"""App benchmarks: loading a ResNet-20-sized run of 650 epochs, the first render of the Bit heatmap
page for it (AppTest), one What-if re-evaluation of a digits model, and the server time of every
page's first draw in a new session and of each interaction (issue 16's targets: <= 2 s, <= 0.3 s).

Run by hand: .venv/bin/python benchmarks/app.py
"""
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pipeline import resnet_history

from bsq_explore.analysis import WhatIf
from bsq_explore.config import preset
from bsq_explore.paths import REPO
from bsq_explore.runs import load_run
from bsq_explore.store import RunFolder

ROOT = REPO


def timed(fn, repeat=5):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    from streamlit.testing.v1 import AppTest

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "resnet650"
        folder = RunFolder.create(run, preset("cifar10-resnet20"), "cpu")
        _, history, _ = resnet_history(650)
        for kind, frame in history.items():
            folder.append(kind, frame)
        folder.finish()
        load_s = timed(lambda: load_run(run))
        os.environ["BSQ_RUNS"] = tmp

        def render():  # a fresh AppTest each time: nothing cached between renders
            at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60)
            at.query_params["run"] = "resnet650"
            at.switch_page("views/heatmap.py").run()
            assert not at.exception and at.get("plotly_chart")
        render_s = timed(render, 3)
        rows = len(history["bits"])
    whatif = WhatIf(load_run(ROOT / "data" / "examples" / "digits-a0.3"))
    names = list(whatif.bits)
    whatif_s = timed(lambda: whatif.evaluate({names[0]: max(whatif.bits[names[0]] - 1, 0)}))
    print(f"ResNet-20 run of 650 epochs: {rows} bit rows")
    print(f"{'measure':<50}{'median (s)':>12}{'target':>10}")
    print(f"{'load_run':<50}{load_s:>12.3f}{'<= 0.3':>10}")
    print(f"{'Bit heatmap page, first render (AppTest)':<50}{render_s:>12.3f}{'<= 1.5':>10}")
    print(f"{'What-if re-evaluation, digits':<50}{whatif_s:>12.4f}{'<= 1':>10}")
    for label, seconds, target in interactions(AppTest) + in_the_browser():
        print(f"{label:<50}{seconds:>12.3f}{target:>10}")


def interactions(AppTest):
    """(label, median server seconds, target) of each page's first draw in a new session (the
    server warm: imports and caches done once) and of one move of each page's main control."""
    def session(page, **params):
        at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60)
        for key, value in params.items():
            at.query_params[key] = value
        return at.switch_page(f"views/{page}.py")

    pages = [("home", {}), ("runs", {}), ("heatmap", dict(run="digits-a0.3")), ("precision", dict(run="digits-a0.3")),
             ("sweep", dict(sweep="digits")), ("compare", dict(run="digits-a0.3", other="digits-a0.1")),
             ("whatif", dict(run="digits-a0.3")), ("train", {}), ("playground", {})]
    session("home").run()  # warm the server: torch, plotly and the caches load once per server
    rows = [(f"first draw, new session: {page}", timed(lambda: session(page, **params).run(), 3), "<= 2")
            for page, params in pages]

    def moves(page, params, move, values):
        at = session(page, **params).run()
        times = []
        for value in values:
            start = time.perf_counter()
            move(at, value).run()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    rows += [
        ("heatmap: epoch slider", moves("heatmap", dict(run="digits-a0.3"), lambda at, v: at.select_slider[0].set_value(v),
                                        (10, 20, 30, 40, 50)), "<= 0.3"),
        ("heatmap: animation toggle", moves("heatmap", dict(run="digits-a0.3"), lambda at, v: at.toggle[0].set_value(v),
                                            (True, False, True)), "<= 0.3"),
        ("what if: a layer's bits", moves("whatif", dict(run="digits-a0.3"), lambda at, v: at.slider[0].set_value(v),
                                          (3, 2, 1)), "<= 0.3"),
        ("sweep: alpha picker", moves("sweep", dict(sweep="digits"), lambda at, v: at.selectbox[1].set_value(v),
                                      ("digits-a0.1", "digits-a0.4", "digits-a0.25")), "<= 0.3"),
    ]
    return rows



FLOOR_APP = """import plotly.graph_objects as go
import streamlit as st
st.title("floor")
st.plotly_chart(go.Figure(go.Heatmap(z=[[0, 1], [1, 0]])))
"""


def serve(script: Path):
    """(server process, url) of `streamlit run script` on a free port, once it answers."""
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
                               "--server.port", str(port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    return server, url


def in_the_browser():
    """(label, median seconds, target) measured in headless Chromium on a served app: a page's first
    draw in a new tab (a new session; the server and the browser's cache warm) until its chart is
    drawn, and an epoch slider move (one arrow key) until the heatmap's title shows the new epoch.
    The first row is the floor: a bare Streamlit page with one tiny plotly chart, in the same
    browser, so the app's rows can be read as a ratio to what Streamlit and plotly.js cost alone."""
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1024, "height": 768})  # its cache: a user's browser

        def first_draw(url):  # a new tab is a new session of the app
            page = context.new_page()
            start = time.perf_counter()
            page.goto(url)
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
            seconds = time.perf_counter() - start
            page.close()
            return seconds

        floor = Path(tmp) / "floor.py"
        floor.write_text(FLOOR_APP)
        for script, paths in ((floor, [""]), (ROOT / "app" / "main.py", ["", "heatmap?run=digits-a0.3",
                                                                          "sweep?sweep=digits",
                                                                          "precision?run=digits-a0.3"])):
            server, url = serve(script)
            try:
                first_draw(url)  # warm the server
                for path in paths:
                    label = "floor (bare page, one chart)" if script == floor else "/" + path.split("?")[0]
                    rows.append((f"browser: first draw {label}", statistics.median(
                        first_draw(f"{url}/{path}") for _ in range(3)), "<= 2"))
                if script != floor:
                    rows.append(("browser: heatmap epoch slider", slider_move(context, url), "<= 0.3"))
            finally:
                server.terminate()
                server.wait(timeout=20)
        browser.close()
    return rows


def slider_move(context, url) -> float:
    """Median seconds from an epoch slider's arrow key to the heatmap's title showing the new epoch."""
    page = context.new_page()
    page.goto(f"{url}/heatmap?run=digits-a0.3")
    page.wait_for_selector(".js-plotly-plot .gtitle", timeout=60_000)
    slider = page.locator("[data-testid='stSlider'] input[type='range']").first
    times = []
    for _ in range(5):
        before = page.locator(".js-plotly-plot .gtitle").first.text_content()
        start = time.perf_counter()
        slider.press("ArrowLeft")
        page.wait_for_function("t => document.querySelector('.js-plotly-plot .gtitle').textContent != t",
                               arg=before, timeout=30_000)
        times.append(time.perf_counter() - start)
    page.close()
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
