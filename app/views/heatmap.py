"""The bit heatmap of one run: which planes are alive at each epoch, and when each one died."""
import streamlit as st

from bsq_explore import analysis, axes, dashboard, plots

st.title("Bit heatmap")
run = dashboard.pick_run()
if run is None:
    st.stop()
if run.bits.empty:
    st.info(dashboard.plain(f"{run.name} has no bit frames: it is a float run or has not reached BSQ training yet."))
    st.stop()


@st.fragment
def heatmap() -> None:  # a slider move or toggle redraws this chart only, not the page
    value = dashboard.url_radio("colour", ["density", "norm"],
                                help="density: share of weights with this bit set; norm: the plane's group norm "
                                     "(what the penalty shrinks) over its layer's largest")
    steps, labels = axes.logged_steps(run.bits)
    step = dashboard.pick_step(steps, labels)
    if dashboard.url_toggle("animate every epoch", key="animate"):
        dashboard.chart(plots.bit_heatmap_animation(run.bits, step, value))
    else:
        dashboard.chart(plots.bit_heatmap(run.bits, step, value))
    st.caption("Each row is a layer, each column one bit of its weights (most significant left). Grey: the plane "
               "was removed. " + ("Colour: the share of the layer's weights that use the bit; dark means few."
                                  if value == "density" else
                                  "Colour: the plane's norm over its layer's largest; dark means the penalty has "
                                  "nearly pushed it to zero."))


heatmap()
st.subheader("When each plane died")
st.caption("BSQ drops a plane when re-quantization finds it all zero: usually the top bits of big layers first, "
           "because the penalty weighs a plane by its layer's size and large weights are rare.")
deaths = analysis.death_epochs(run.bits)
deaths = deaths.assign(died_at=deaths.died_at.replace("", "still alive"))[["layer", "bit", "died_at"]]
st.dataframe(deaths, hide_index=True, height="content", column_config={
    "layer": st.column_config.TextColumn("layer", help="in network order"),
    "bit": st.column_config.NumberColumn("bit", help="its significance: 7 is the top bit of an 8-bit start"),
    "died_at": st.column_config.TextColumn("died at", help="the stage and epoch whose re-quantization removed it")})
