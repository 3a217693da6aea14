"""Precision over time: per-layer bits per epoch, final bits, and the training curves."""
import streamlit as st

from bsq_explore import analysis, dashboard, plots

st.title("Precision")
run = dashboard.pick_run()
if run is None:
    st.stop()
if run.layers.empty:
    st.info(dashboard.plain(f"{run.name} has no layer frames: it is a float run or has not reached BSQ training yet."))
else:
    dashboard.chart(plots.precision_timeline(run.layers))
    dashboard.chart(plots.layer_precision_bars(analysis.sweep_layers([run])))
if not run.metrics.empty:
    dashboard.chart(plots.metrics_curves(run.metrics))
