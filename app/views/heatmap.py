"""The bit heatmap of one run: which planes are alive at each epoch, and when each one died."""
import streamlit as st

from bsq_explore import analysis, axes, dashboard, plots

head = st.columns([2, 3], vertical_alignment="bottom")  # title and picker side by side: the chart's rows fit one screen
head[0].title("Bit heatmap")
with head[1]:
    run = dashboard.pick_run()
if run is None:
    st.stop()
if run.bits.empty:
    st.info(dashboard.plain(f"{run.name} has no bit frames: it is a float run or has not reached BSQ training yet."))
    st.stop()


@st.fragment
def heatmap() -> None:  # a slider move or toggle redraws this chart only, not the page
    controls = st.columns([3, 5, 2], vertical_alignment="bottom")
    with controls[0]:
        value = dashboard.url_radio("colour", ["density", "norm"], label_visibility="collapsed")  # the caption explains
    with controls[2]:
        animate = dashboard.url_toggle("animate", key="animate")
    steps, labels = axes.logged_steps(run.bits)
    if animate:  # the animation has its own slider: a second one on the page would disagree with it
        dashboard.chart(plots.bit_heatmap_animation(run.bits, steps[0], value))
    else:
        with controls[1]:
            step = dashboard.pick_step(steps, labels)
        dashboard.chart(plots.bit_heatmap(run.bits, step, value))
    st.caption("Each row is a layer, each column one bit of its weights (most significant left). Grey: the plane "
               "was removed. " + ("Colour: the share of the layer's weights that use the bit; dark means few. A "
                                  "cell that reads 0.00 but is not grey is a plane under 0.5 % of the weights use, "
                                  "or an empty one between live bits: re-quantization removes only a layer's top "
                                  "and bottom planes, and only when they are empty."
                                  if value == "density" else
                                  "Colour: the plane's norm over its layer's largest; dark means the penalty has "
                                  "nearly pushed it to zero."))


heatmap()
st.subheader("When each plane died")
st.caption("BSQ drops a plane when re-quantization finds it all zero: usually the top bits of big layers first, "
           "because the penalty weighs a plane by its layer's size and large weights are rare. '7 at bsq 3': bit 7 "
           "(the top bit of an 8-bit start) was removed by the re-quantization after BSQ epoch 3.")
deaths = analysis.deaths_by_layer(run.bits)
dashboard.static_table(deaths.assign(died=deaths.died.replace("", "none")).rename(  # a long cell wraps, never cut
    columns={"alive": "bits alive", "died": "planes removed"}))
