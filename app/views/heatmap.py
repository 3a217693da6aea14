"""The bit heatmap of one run: which planes are alive at each epoch, and when each one died."""
import streamlit as st

from bsq_explore import analysis, dashboard, plots

st.title("Bit heatmap")
run = dashboard.pick_run()
if run is None:
    st.stop()
if run.bits.empty:
    st.info(f"{run.name} has no bit frames: it is a float run or has not reached BSQ training yet.")
    st.stop()
value = st.radio("colour", ["density", "norm"], horizontal=True,
                 help="density: share of weights with this bit set; norm: the plane's group norm, what the Lasso shrinks")
steps, labels = analysis.logged_steps(run.bits)
step = dashboard.pick_step(steps, labels)
st.plotly_chart(plots.bit_heatmap(run.bits, step, value))
st.caption("Grey: the plane was removed. Dark: the plane is alive but few weights use it.")
if st.toggle("animate every epoch"):
    st.plotly_chart(plots.bit_heatmap_animation(run.bits, step, value))
st.subheader("When each plane died")
deaths = analysis.death_epochs(run.bits)
st.dataframe(deaths, hide_index=True)
