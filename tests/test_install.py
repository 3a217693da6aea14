"""The kit installed from its wheel (not editable): runs go to the user's data folder, never into
site-packages; the CLI trains and exports from any folder, and the app is in the wheel."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from bsq_explore.paths import REPO

SOURCES = ["bsq_explore", "app", "pyproject.toml", "README.md"]  # what the wheel is built from


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, its site-packages, environment) with the wheel installed; the dependencies are this
    environment's, put on the path by a .pth file (nothing downloads)."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # a copy: building in place would leave build/ in the checkout
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "wheel", source], check=True)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    subprocess.run([*pip, "--python", venv / "bin" / "python", "install", "--no-deps",
                    next((tmp / "wheel").glob("*.whl"))], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BSQ_")}
    env.update(HOME=str(tmp / "home"), XDG_DATA_HOME=str(tmp / "home" / "data"))
    return venv, site, env


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


def test_an_installed_kit_trains_and_exports_from_any_folder_and_leaves_site_packages_alone(installed, tmp_path):
    venv, site, env = installed
    before = listing(site)

    def cli(*args):
        return subprocess.run([venv / "bin" / "bsq-explore", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
    where = subprocess.run([venv / "bin" / "python", "-c", "import bsq_explore.paths as p; print(p.RUNS, p.APP)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    runs, app = Path(where[0]), Path(where[1])
    assert runs == Path(env["XDG_DATA_HOME"]) / "bsq_explore" / "runs"
    assert app.is_file() and app.is_relative_to(site) and (app.parent / "views" / "whatif.py").is_file()
    assert "no runs under" in cli("ls").stdout
    done = cli("train", "--preset", "digits-mlp", "--pretrain-epochs", "1", "--bsq-epochs", "2", "--requant-every", "1",
               "--finetune-epochs", "1", "--name", "first")
    assert done.returncode == 0, done.stderr
    assert (runs / "first" / "model.pt").is_file()
    assert "first" in cli("ls").stdout
    done = cli("export", "first", "--format", "qonnx", "--out", "first.onnx")
    assert done.returncode == 0 and (tmp_path / "first.onnx").is_file(), done.stderr
    assert listing(site) == before, "the kit wrote into site-packages"


def test_bsq_explore_app_serves_the_installed_app(installed, tmp_path):
    import time
    import urllib.request

    venv, site, env = installed
    assert (site / "bsq_explore" / "app" / ".streamlit" / "config.toml").is_file(), "its settings: upload cap, theme"
    code = ("from streamlit.testing.v1 import AppTest\nimport bsq_explore.paths as p\n"
            "at = AppTest.from_file(str(p.APP), default_timeout=60).run()\n"
            "assert not at.exception, at.exception\nprint(at.title[0].value)")
    drawn = subprocess.run([venv / "bin" / "python", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert drawn.returncode == 0 and drawn.stdout.strip() == "Watch bits die", drawn.stderr[-2000:]
    server = subprocess.Popen([venv / "bin" / "bsq-explore", "app", "--port", "8597"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        health = None
        for _ in range(120):
            try:
                health = urllib.request.urlopen("http://127.0.0.1:8597/_stcore/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.5)
        assert health == b"ok"
    finally:
        server.terminate()
        server.wait(timeout=20)
