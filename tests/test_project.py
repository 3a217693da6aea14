"""The project's set-up files agree with each other."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_installs_this_project_with_a_supported_python():
    text = (ROOT / "environment.yml").read_text()
    python = re.search(r"^\s*-\s*python\s*=\s*([\d.]+)\s*$", text, re.M)
    assert python, "environment.yml pins python"
    minimum = re.fullmatch(r">=\s*(\d+)\.(\d+)", pyproject()["project"]["requires-python"])
    assert tuple(map(int, python.group(1).split("."))) >= tuple(map(int, minimum.groups()))
    assert re.search(r"^\s*-\s*pip\s*$", text, re.M)
    extras = re.search(r'-e \.\[([\w,]+)\]', text)
    assert extras and set(extras.group(1).split(",")) <= set(pyproject()["project"]["optional-dependencies"])
    make = re.search(r"pip install .*-e '\.\[([\w,]+)\]'", (ROOT / "Makefile").read_text())
    assert make and extras.group(1) == make.group(1), "environment.yml installs what make test installs"
    dev = " ".join(pyproject()["project"]["optional-dependencies"]["dev"])
    assert all(extra in dev for extra in ("app", "notebooks", "qonnx", "tensorboard")), "dev holds every extra tests use"


def test_pyproject_admits_the_local_torch_pair():
    deps = {re.split(r"[<>=!~ ]", d)[0]: d for d in pyproject()["project"]["dependencies"]}
    for name, version in (("torch", (2, 14, 1)), ("torchvision", (0, 29, 1))):
        for op, bound in re.findall(r"(<=|>=|==|<|>)\s*([\d.]+)", deps[name]):
            b = tuple(map(int, bound.split(".")))
            assert {"<=": version <= b, ">=": version >= b, "==": version == b,
                    "<": version < b, ">": version > b}[op], f"{name} {version} breaks {op}{bound}"


def test_console_script_and_light_import():
    assert pyproject()["project"]["scripts"]["bsq-explore"] == "bsq_explore.cli:main"
    heavy = "('torch', 'streamlit', 'plotly', 'ipywidgets', 'pandas')"
    code = f"import sys, bsq_explore; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", "import bsq_explore must stay light"


def test_the_packages_verbs_are_the_modules_own():
    import bsq_explore
    from bsq_explore import bsq, catalog, config, layers, progress, runs, train

    owners = {"preset": config, "BSQConfig": config, "resume": train, "fit": train, "load_run": runs, "list_runs": catalog,
              "convert_": layers, "requantize_": bsq, "bit_lasso": bsq, "ProgressBar": progress}
    assert sorted(bsq_explore.__all__) == sorted(owners)
    for name, module in owners.items():
        assert getattr(bsq_explore, name) is getattr(module, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bsq_explore.nope


def test_readme_shows_the_two_commands_and_every_module_as_its_docstring_says():
    readme = (ROOT / "README.md").read_text()
    assert "make app" in readme and "make test" in readme
    layout = dict(re.findall(r"^  (\w+\.py) +(.+)$", readme, re.M))
    modules = {path.name: ast.get_docstring(ast.parse(path.read_text())) for path in (ROOT / "bsq_explore").glob("*.py")}
    assert set(layout) == set(modules), "README's Layout lists every module of bsq_explore, and only those"
    for name, doc in modules.items():
        assert doc and layout[name] == doc.splitlines()[0], f"{name}: README's Layout and its docstring differ"


def test_the_app_caps_uploads_just_above_the_largest_tensor_the_playground_reads():
    from bsq_explore.uploads import MAX_UPLOAD

    limit = tomllib.loads((ROOT / "app" / ".streamlit" / "config.toml").read_text())["server"]["maxUploadSize"] * 2**20
    largest = 16 * MAX_UPLOAD + 65536  # a .pt of MAX_UPLOAD float64 elements, as read_tensor allows
    assert largest <= limit <= 2 * largest, "bigger files are refused before the server reads them whole"


def test_the_app_has_its_settings_from_any_folder_and_skips_streamlits_full_collection(monkeypatch, tmp_path):
    from streamlit import config

    from bsq_explore.paths import APP

    monkeypatch.chdir(tmp_path)  # not the checkout: `bsq-explore app` may start anywhere
    monkeypatch.setattr(config, "_main_script_path", str(APP))  # as `streamlit run APP` sets it
    config.get_config_options(force_reparse=True)
    try:  # the upload cap, and no collection after every run: with torch loaded it delays each answer 0.15 s
        assert config.get_option("server.maxUploadSize") == 17 and config.get_option("runner.postScriptGC") is False
    finally:
        monkeypatch.undo()
        config.get_config_options(force_reparse=True)


def test_every_torch_load_in_the_package_and_app_uses_weights_only():
    calls = []
    for path in sorted([*(ROOT / "bsq_explore").rglob("*.py"), *(ROOT / "app").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", safe))
    assert len(calls) >= 2, "run files (runs.read_torch, the one reader of checkpoints, float and export) and uploads"
    assert [where for where, safe in calls if not safe] == []


def _modules():
    return sorted((ROOT / "bsq_explore").glob("*.py"))


def test_every_module_declares_its_api_in_all():
    import importlib

    for path in _modules():
        if path.name == "__init__.py":
            continue
        module = importlib.import_module(f"bsq_explore.{path.stem}")
        assert isinstance(getattr(module, "__all__", None), list), f"{path.name} has no __all__"
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, f"{path.name}: __all__ names {missing}, which it lacks"


def test_no_function_in_the_package_is_longer_than_40_lines_beside_its_docstring():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = node.body[0].end_lineno - node.body[0].lineno + 1 if ast.get_docstring(node) else 0
                lines = node.end_lineno - node.lineno + 1 - doc
                if lines > 40:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert long == []


def test_the_storage_modules_ls_and_show_do_not_import_torch():
    code = "import sys, bsq_explore.store, bsq_explore.runs, bsq_explore.catalog, bsq_explore.jobs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    examples = str(ROOT / "data" / "examples")
    for args, code in [(["ls", examples], 0), (["show", "digits-a0.3"], 0), (["show", "no-such-run"], 2),
                       (["ls", "--bad"], 2)]:  # answers and one-line errors alike
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "bsq_explore.cli", *args],
                              capture_output=True, text=True)
        assert done.returncode == code and "| torch" not in done.stderr, f"bsq-explore {' '.join(args)} imports torch"


def test_make_app_listens_on_this_machine_only_unless_told():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^ADDRESS \?= 127\.0\.0\.1$", makefile, re.M)
    assert re.search(r"bsq-explore app --port \$\(PORT\) --address \$\(ADDRESS\)$", makefile, re.M)
    from bsq_explore.cli import build_parser

    assert build_parser().parse_args(["app"]).address == "127.0.0.1"  # bsq-explore app alone: this machine only
