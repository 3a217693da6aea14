"""Streamlit glue shared by the app's pages: runs roots, cached loading, the URL's run/sweep/epoch."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from .paths import EXAMPLES, runs_root
from .runs import DamagedRun, Run, check_name, finished_bsq, list_runs, load_run, stamp


_PERCENT = dict(format="percent")
VERDICT_COLUMNS = {  # analysis.verdict's columns as the Sweep page shows them
    "bits": st.column_config.NumberColumn("bits", help="the uniform baseline's bits"),
    "acc": st.column_config.NumberColumn("accuracy", help="the baseline's final test accuracy", **_PERCENT),
    "best_bsq": st.column_config.TextColumn("best BSQ run", help="most accurate BSQ run at no more bits"),
    "best_bits": st.column_config.NumberColumn("bits of best", help="its average bits", format="%.2f"),
    "best_acc": st.column_config.NumberColumn("accuracy of best", **_PERCENT),
    "gain": st.column_config.NumberColumn("gain (points)", help="its accuracy minus the baseline's",
                                          format="%+.1f"),
    "smallest_bsq": st.column_config.TextColumn("smallest BSQ run as good",
                                                help="fewest average bits within half a point of the baseline"),
    "smallest_bits": st.column_config.NumberColumn("bits of smallest", format="%.2f"),
    "smallest_acc": st.column_config.NumberColumn("accuracy of smallest", **_PERCENT),
    "size_ratio": st.column_config.NumberColumn("size ratio", help="baseline bits / its bits", format="%.2fx"),
}


def roots() -> list[Path]:
    """The user's runs root (sidebar, else $BSQ_RUNS or data/runs) and the shipped examples."""
    user = Path(st.session_state.get("runs_root") or runs_root())
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
        st.error(f"No run named {name!r} in {', '.join(map(str, roots()))}.")
        return None
    try:
        return _load(str(path), stamp(path))
    except DamagedRun as err:
        st.error(f"Run {name} is damaged: {err}")
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
    wanted = st.query_params.get(key) or st.session_state.get(f"last_{key}")
    first = featured(table)
    if first == avoid and len(names) > 1:
        first = next(n for n in names if n != avoid)
    start = names.index(wanted) if wanted in names else names.index(first)
    name = st.selectbox(label, names, index=start, key=f"pick_{key}")
    st.session_state[f"last_{key}"] = name
    st.query_params[key] = name
    return open_run(name)


def featured(table: pd.DataFrame) -> str:
    """The run to open first: from the sweep on the hardest problem (its float model the least
    accurate: real data before digits), the most compressed BSQ run within 2 points of that float
    model; without sweeps, the most compressed BSQ run within 2 points of the best; else the first run."""
    done = finished_bsq(table).dropna(subset=["test_acc", "compression"])
    if done.empty:
        return table.name.iloc[0]
    floats = table[(table.kind == "float") & (table.status == "finished") & table.sweep.isin(done.sweep)]
    floats = floats.dropna(subset=["test_acc"])
    if len(floats):
        hardest = floats.sort_values("test_acc").iloc[0]
        done, best = done[done.sweep == hardest.sweep], hardest.test_acc
    else:
        best = table.test_acc.max()
    good = done[done.test_acc >= best - 0.02]
    return (good if len(good) else done).sort_values("compression").name.iloc[-1]


def pick_step(steps: list[int], labels: list[str], key: str = "epoch") -> int:
    """An epoch slider over the logged steps, remembered in the URL (?epoch=STEP)."""
    wanted = st.query_params.get(key)
    start = int(wanted) if wanted is not None and wanted.lstrip("-").isdigit() and int(wanted) in steps else steps[-1]
    if len(steps) == 1:
        return steps[0]
    step = st.select_slider("epoch", options=steps, value=start, format_func=dict(zip(steps, labels)).get,
                            key=f"slider_{key}")
    st.query_params[key] = str(step)
    return step


def sidebar() -> None:
    st.sidebar.text_input("runs root", value=str(runs_root()), key="runs_root",
                          help="Folder of run folders; the shipped examples are always listed too.")
