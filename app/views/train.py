"""Start a run in the background and watch its bits die while it trains."""
import streamlit as st

from bsq_explore import dashboard, plots, runs, train
from bsq_explore.config import PRESETS, preset

st.title("Train")
root = dashboard.roots()[0]
with st.form("new_run"):
    name_of_preset = st.selectbox("preset", list(PRESETS))
    alpha = st.number_input("alpha", min_value=0.0, value=0.3, step=0.05, format="%.3f")
    epochs = st.number_input("BSQ epochs", min_value=1, value=40, step=5)
    name = st.text_input("run name", value=runs.run_name(preset(name_of_preset, alpha=alpha), name_of_preset) + "-app")
    start = st.form_submit_button("start training")
if start:
    try:
        train.launch(preset(name_of_preset, alpha=alpha, bsq_epochs=int(epochs)), root, name)
        st.session_state["watching"] = name
        st.success(f"started {name} in {root}; it keeps running if you close this page")
    except (ValueError, FileExistsError) as err:
        st.error(str(err))


@st.fragment(run_every=2)
def watch(name: str) -> None:
    run = dashboard.open_run(name) if dashboard.find(name) else None
    if run is None:
        st.info(f"waiting for {name} to write its first epoch…")
        return
    total, done = len(train.plan(run.config)), len(run.metrics)
    st.progress(min(done / max(total, 1), 1.0), text=f"{name}: {run.info['status']}, epoch {done} of {total}")
    if run.info.get("error"):
        st.error(run.info["error"])
    if not run.bits.empty:
        dashboard.chart(plots.bit_heatmap(run.bits), key="live_heatmap")


if st.session_state.get("watching"):
    watch(st.session_state["watching"])
else:
    st.caption(f"Runs started here are written to the runs root in the sidebar: {root}")
