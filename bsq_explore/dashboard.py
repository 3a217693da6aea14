"""Streamlit glue shared by the app's pages: runs roots, cached loading, the URL's run/sweep/epoch."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pandas as pd
import streamlit as st

from . import catalog
from .analysis import featured
from .catalog import finished_bsq, list_runs, stamp
from .paths import EXAMPLES, check_not_examples, runs_root
from .runs import DamagedRun, Run, load_run
from .store import check_name

__all__ = ["APP_RUNS", "max_app_runs", "static_table", "verdict_table", "twin_table", "run_table", "static_run_table",
           "plain", "pick_sweep", "pick_alpha", "epoch_seconds", "duration", "delta", "chart", "roots", "runs_table",
           "all_runs", "find", "open_run", "empty_state", "pick_run", "pick_step", "url_radio", "url_toggle", "style",
           "sidebar"]

APP_RUNS = "BSQ_APP_RUNS"  # how many runs the Train page may have training at once


def max_app_runs() -> int:
    """$BSQ_APP_RUNS, default 2 (one per core of a small machine): more runs side by side only slow each
    other; 0 serves the app read-only, without its Train page."""
    text = os.environ.get(APP_RUNS, "2")
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"${APP_RUNS} must be a whole number >= 0, not {text!r}")
    return int(text)


AT_CHANCE = 0.05  # a finished run this close to guessing's accuracy is listed as "at chance"
_ACCURACIES = ("acc", "best_acc", "smallest_acc", "test_acc", "bsq_acc", "bsq_test_acc", "hessian_test_acc")
_TEXT, _PERCENT = "%s", "%.1f %%"  # accuracies are shown as percentages, one decimal everywhere
# each table's columns as the app shows them: header, printf format[, help[, width in px]] (narrow for 1024 px)
_VERDICT_COLUMNS = {
    "baseline": ("baseline", _TEXT), "acc": ("accuracy", _PERCENT), "best_run": ("best run", _TEXT),
    "best_acc": ("its accuracy", _PERCENT), "gain": ("gain", "%+.1f"), "smallest_run": ("smallest as good", _TEXT),
    "smallest_bits": ("its bits", "%.2f"), "size_ratio": ("size ratio", "%.2fx"),
}
_TWIN_COLUMNS = {
    "alpha": ("alpha", "%g"), "bsq": ("BSQ run", _TEXT), "bsq_bits": ("BSQ bits", "%.2f"),
    "bsq_test_acc": ("BSQ accuracy", _PERCENT), "hessian": ("Hessian twin", _TEXT),
    "hessian_bits": ("twin bits", "%.2f"), "hessian_test_acc": ("twin accuracy", _PERCENT), "gain": ("gain", "%+.1f"),
}
_RUN_COLUMNS = {  # list_runs / sweep_table columns (not the sweep: a sweep's run names start with it)
    "name": ("run", _TEXT, "the run's folder name"),
    "status": ("status", _TEXT, "running, finished, failed, damaged or stale (killed); at chance: finished, its "
                                f"accuracy is within {100 * AT_CHANCE:g} points of guessing's (10 % on ten classes), "
                                "whatever its size"),
    "kind": ("kind", _TEXT, "bsq: trained with the bit penalty; uniform k-bit: fixed bits, the baseline; hessian: "
                            "each layer's bits chosen from its Hessian trace; float: the 32-bit model a sweep starts from",
             120),  # px: the grid sizes a column by its first rows, and "uniform 8-bit" comes late
    "alpha": ("alpha", "%g", "strength of the bit penalty"),
    "test_acc": ("accuracy", _PERCENT, "final test accuracy, after finetuning"),
    "bsq_acc": ("after BSQ", _PERCENT, "test accuracy before finetuning"),
    "avg_bits": ("avg bits", "%.2f", "bits per weight over the quantized layers"),
    "compression": ("compression", "%.1fx", "32 / average bits"),
    "epochs": ("evaluations", "%d", "test evaluations logged so far: one after each epoch, and one as BSQ starts "
                                    "(bsq 0: the model just converted to bit planes)"),
    "reason": ("reason", _TEXT, "why a run failed or cannot be read"),
}


def _in_percent(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.assign(**{c: 100 * pd.to_numeric(frame[c], errors="coerce") for c in _ACCURACIES if c in frame})
    if "gain" in frame:  # + 0.0 turns -0.0 (a loss that rounds away) into 0.0: no "-0.0" on screen
        frame["gain"] = pd.to_numeric(frame.gain, errors="coerce").round(1) + 0.0
    return frame


def _format_columns(frame: pd.DataFrame, columns: dict) -> pd.DataFrame:
    """frame's columns as text under their headers, accuracies in %, "–" where a value is missing and
    "∞" for an infinite one (the compression of a run with no weight left)."""
    frame = _in_percent(frame)
    return pd.DataFrame({spec[0]: ["–" if pd.isna(v) else "∞" if v == math.inf else spec[1] % v for v in frame[c]]
                         for c, spec in columns.items() if c in frame})


def static_table(frame: pd.DataFrame) -> None:
    """A small table as plain HTML, every row shown, its first column as the row labels: lighter than
    st.dataframe's grid (Compare and Sweep draw faster without them). st.table reads cells as
    markdown, so each goes through plain()."""
    st.table(frame.map(plain).set_index(frame.columns[0]))


def twin_table(pairs: pd.DataFrame) -> None:
    """analysis.twins as a static table: every row shown, accuracies in %."""
    static_table(_format_columns(pairs, _TWIN_COLUMNS))


def verdict_table(verdict: pd.DataFrame) -> None:
    """analysis.verdict as a static table: every row shown, accuracies in %."""
    static_table(_format_columns(verdict, _VERDICT_COLUMNS))


def _select_run_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """list_runs or sweep_table rows as the app lists them: no column that is empty in every row, a
    uniform run's bits in its kind (one column less on a 1024 px screen)."""
    frame = frame.drop(columns=[c for c in ("path", "reason") if c in frame and not frame[c].astype(bool).any()])
    frame = frame.assign(alpha=pd.to_numeric(frame.alpha, errors="coerce"))
    guessing = (frame.status == "finished") & (pd.to_numeric(frame.test_acc, errors="coerce") <=
                                               pd.to_numeric(frame.chance, errors="coerce") + AT_CHANCE)
    frame.loc[guessing, "status"] = "at chance"  # a collapsed run: its compression is no win
    uniform = frame.kind == "uniform"
    frame.loc[uniform, "kind"] = [f"uniform {b:g}-bit" for b in pd.to_numeric(frame.nbits[uniform])]
    return frame[[c for c in _RUN_COLUMNS if c in frame]]


def run_table(frame: pd.DataFrame) -> None:
    """A table of runs to sort and scroll, with readable headers, help, accuracy in %."""
    config = {c: st.column_config.TextColumn(header, help=tip, width=width[0] if width else None) if form == _TEXT
              else st.column_config.NumberColumn(header, help=tip, format=form)
              for c, (header, form, tip, *width) in _RUN_COLUMNS.items()}
    st.dataframe(_in_percent(_select_run_columns(frame)), hide_index=True, column_config=config, height="content",
                 placeholder="–")


def static_run_table(frame: pd.DataFrame) -> None:
    """The runs of one sweep (a few dozen at most) as a static table: lighter than run_table's grid."""
    static_table(_format_columns(_select_run_columns(frame), _RUN_COLUMNS))


def pick_sweep(table: pd.DataFrame) -> str | None:
    """A sweep picker remembered in the URL (?sweep=NAME), opening the sweep of featured() first."""
    sweeps = sorted(table.sweep.dropna().unique())
    if not sweeps:
        return None
    wanted = st.query_params.get("sweep")
    if wanted not in sweeps:
        hit = table[table.name == featured(table)].sweep
        wanted = hit.iloc[0] if len(hit) and hit.iloc[0] in sweeps else sweeps[0]
    name = st.selectbox("sweep", sweeps, index=sweeps.index(wanted))
    st.query_params["sweep"] = name
    return name


def pick_alpha(rows: pd.DataFrame, clicked: list) -> str:
    """The BSQ run of a sweep (its list_runs rows) to show: a clicked BSQ point (a click on a
    uniform baseline changes nothing), else ?alpha= from the URL, else featured(). The alpha goes
    to the URL."""
    bsq = finished_bsq(rows).sort_values("alpha")
    names, alphas = bsq.name.tolist(), dict(zip(bsq.name, bsq.alpha))
    hit = next((c for c in clicked if c in names), None)
    if hit is not None:
        st.session_state["pick_alpha"] = hit
    if st.session_state.get("pick_alpha") not in names:
        by_alpha = {f"{a:g}": n for n, a in alphas.items()}
        first = by_alpha.get(st.query_params.get("alpha")) or featured(rows)
        st.session_state["pick_alpha"] = first if first in names else names[0]
    name = st.selectbox("alpha", names, key="pick_alpha", format_func=lambda n: f"α = {alphas[n]:g}  ({n})")
    st.query_params["alpha"] = f"{alphas[name]:g}"
    return name


def plain(text) -> str:
    """text (from a URL, a run folder, an error) to show in a markdown element as itself: every ASCII
    punctuation mark escaped, so no link, image, code, emphasis or formula can form; one line."""
    return re.sub(r"[!-/:-@\[-`{-~]", lambda m: "\\" + m.group(), " ".join(str(text).splitlines()))


@st.cache_data(show_spinner=False, max_entries=32)
def epoch_seconds(model: str, dataset: str) -> float | None:
    """catalog.epoch_seconds over the shipped examples (read once per server)."""
    return catalog.epoch_seconds(EXAMPLES, model, dataset)


def duration(seconds: float) -> str:
    """'40 s', '12 min', '3.5 hours', '2.1 days': a time to read at a glance."""
    for unit, size in (("days", 86400), ("hours", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.2g} {unit}" if unit != "min" else f"{seconds / size:.0f} min"
    return f"{seconds:.0f} s"


def delta(value: float, decimals: int, unit: str = "") -> str | None:
    """A metric's delta as text, or None (no arrow, no colour) when it rounds to zero."""
    return f"{value:+.{decimals}f}{unit}" if round(value, decimals) else None


def chart(fig, **kwargs):
    """st.plotly_chart with the figure's own projector styling (plots.FONT), not streamlit's theme."""
    return st.plotly_chart(fig, theme=None, **kwargs)


def write_root() -> Path:
    """Where the Train page writes: the server's runs root ($BSQ_RUNS, else data/runs), never the
    sidebar's or the URL's (a visitor must not choose where the server writes), never the examples."""
    root = runs_root()
    check_not_examples(root, f"the runs root {root}")
    return root


@st.cache_resource
def launched() -> list:
    """The jobs.Launch of every run this server started: the Train page shows the error of one
    that ended before its folder existed. (The run limit counts processes, not this list.)"""
    return []


def roots() -> list[Path]:
    """The user's runs root (sidebar, else $BSQ_RUNS or data/runs) and the shipped examples; a
    root typed in the sidebar that is not a folder is left out (the sidebar says so)."""
    user = Path(st.session_state.get("runs_root") or runs_root())
    if str(user) != str(runs_root()) and not user.is_dir():
        return [EXAMPLES]
    return [user, EXAMPLES] if user.resolve() != EXAMPLES.resolve() else [EXAMPLES]


@st.cache_data(show_spinner=False, max_entries=64)
def _load(path: str, stamp: tuple) -> Run:
    return load_run(path)


@st.cache_data(show_spinner=False, ttl=2)
def runs_table(paths: tuple[str, ...]) -> pd.DataFrame:
    return list_runs(*paths)


def all_runs() -> pd.DataFrame:
    return runs_table(tuple(str(r) for r in roots()))


def find(name: str) -> Path | None:
    """A run folder by name, looked up only inside the roots (whatever the URL says)."""
    try:
        check_name(name)
    except ValueError:
        return None
    return next((r / name for r in roots() if (r / name).is_dir()), None)


def open_run(name: str) -> Run | None:
    """Load a run by name; a damaged one shows its reason and gives None."""
    path = find(name)
    if path is None:
        st.error(plain(f"No run named {name!r} in {', '.join(map(str, roots()))}."))
        return None
    try:
        return _load(str(path), stamp(path))
    except DamagedRun as err:
        st.error(plain(f"Run {name} is damaged: {err}"))
        return None


def empty_state() -> None:
    st.info("No runs yet. Start one on the **Train** page, or from a terminal:\n\n"
            "`bsq-explore train --preset digits-mlp --alpha 0.3`\n\n"
            f"Runs are read from {', '.join(f'`{r}`' for r in roots())}.")


def pick_run(label: str = "run", key: str = "run", finished_only: bool = False, avoid: str | None = None) -> Run | None:
    """A run picker remembered in the URL (?run=NAME); damaged runs are listed but not opened.
    Without a choice yet it opens featured(), or the first other run when that one is `avoid`."""
    table = all_runs()
    table = table[table.status != "damaged"]
    if finished_only:
        table = table[table.status == "finished"]
    if table.empty:
        empty_state()
        return None
    names = table.name.tolist()
    asked = st.query_params.get(key)
    wanted = asked or st.session_state.get(f"last_{key}")
    others = table[table.name != avoid]
    first = featured(others) if len(others) else names[0]
    if asked and asked not in names:
        st.warning(plain(f"No run named {asked!r} in {', '.join(map(str, roots()))}; showing {first} instead."))
    start = names.index(wanted) if wanted in names else names.index(first)
    name = st.selectbox(label, names, index=start, key=f"pick_{key}")
    st.session_state[f"last_{key}"] = name
    st.query_params[key] = name
    return open_run(name)


def pick_step(steps: list[int], labels: list[str], key: str = "epoch") -> int:
    """An epoch slider over the logged steps, remembered in the URL (?epoch=STEP)."""
    wanted = st.query_params.get(key, "")
    start = int(wanted) if re.fullmatch(r"-?[0-9]{1,18}", wanted) and int(wanted) in steps else steps[-1]  # '²' is a digit
    if len(steps) == 1:
        return steps[0]
    step = st.select_slider("epoch", options=steps, value=start, format_func=dict(zip(steps, labels)).get,
                            key=f"slider_{key}", label_visibility="collapsed")  # its value, over the thumb, says it
    st.query_params[key] = str(step)
    return step


def url_radio(key: str, options: list[str], **kwargs) -> str:
    """A horizontal radio remembered in the URL (?key=OPTION)."""
    wanted = st.query_params.get(key)
    choice = st.radio(key, options, index=options.index(wanted) if wanted in options else 0, horizontal=True,
                      key=f"radio_{key}", **kwargs)
    st.query_params[key] = choice
    return choice


def url_toggle(label: str, key: str) -> bool:
    """A toggle remembered in the URL (?key=1)."""
    on = st.toggle(label, value=st.query_params.get(key) == "1", key=f"toggle_{key}")
    st.query_params[key] = "1" if on else "0"
    return on


# streamlit leaves about 150 px above a page's title: at 1024x768 that is a fifth of the screen
# captions: streamlit fades them to 60 % (#767676 on white, 4.5:1), which a projector washes out; 80 % is 9:1
_STYLE = ("<style>[data-testid='stMainBlockContainer'] {padding-top: 4.2rem} "
          "[data-testid='stCaptionContainer'] {opacity: 0.8}</style>")


def style() -> None:
    """The app's own layout rules, on every page."""
    st.html(_STYLE)


def sidebar() -> None:
    """The runs root, remembered in the URL (?root=PATH) when it is not the default."""
    default = str(runs_root())
    if "runs_root" not in st.session_state:
        st.session_state["runs_root"] = st.query_params.get("root") or default
    root = st.sidebar.text_input("runs root", key="runs_root",
                                 help="Folder of run folders; the shipped examples are always listed too.")
    if root == default:
        st.query_params.pop("root", None)
        return
    st.query_params["root"] = root
    if not Path(root).is_dir():
        st.sidebar.error(plain(f"{root} is not a folder: showing the shipped examples only."))
