"""Two runs side by side: heatmaps at the same point of training, and their curves on shared axes."""
import streamlit as st

from bsq_explore import analysis, dashboard, plots

st.title("Compare")
left, right = st.columns(2)
with left:
    a = dashboard.pick_run("first run", key="run")
with right:
    b = dashboard.pick_run("second run", key="other", avoid=a.name if a else None)
if a is None or b is None:
    st.stop()
which = st.radio("epoch", ["final", "end of BSQ"], horizontal=True)
for col, run in ((left, a), (right, b)):
    with col:
        if run.bits.empty:
            st.info(f"{run.name} has no bit frames.")
            continue
        bsq = run.bits[run.bits.stage == "bsq"]
        step = int((bsq if which == "end of BSQ" and len(bsq) else run.bits).step.max())
        dashboard.chart(plots.bit_heatmap(run.bits, step), key=f"heat_{col is left}")
        st.dataframe(analysis.final_layers(run)[["layer", "numel", "nbits"]], hide_index=True)
dashboard.chart(plots.compare_metrics({a.name: a.metrics, b.name: b.metrics}))
