"""App benchmarks (issue 5): loading a ResNet-20-sized run of 650 epochs, the first render of the
Bit heatmap page for it (AppTest), and one What-if re-evaluation of a digits model.

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
from bsq_explore.runs import RunFolder, load_run

ROOT = Path(__file__).resolve().parents[1]


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
    print(f"{'measure':<44}{'median (s)':>12}{'target':>10}")
    print(f"{'load_run':<44}{load_s:>12.3f}{'<= 0.3':>10}")
    print(f"{'Bit heatmap page, first render (AppTest)':<44}{render_s:>12.3f}{'<= 1.5':>10}")
    print(f"{'What-if re-evaluation, digits':<44}{whatif_s:>12.4f}{'<= 1':>10}")


if __name__ == "__main__":
    sys.exit(main())
