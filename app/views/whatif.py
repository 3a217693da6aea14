"""What if a layer had fewer bits? Drop low bits per layer and see accuracy and size at once."""
import streamlit as st

from bsq_explore import analysis, dashboard
from bsq_explore.runs import DamagedRun, load_run

st.title("What if")
st.caption("Each slider keeps that many of the layer's bits; the dropped low bits are rounded away, so each "
           "weight moves to the nearest point of a coarser grid. (Training kills top bits instead: a top bit "
           "dies when no weight is large enough to need it.)")
run = dashboard.pick_run(finished_only=True)
if run is None:
    st.stop()
if run.kind == "float":
    st.info(dashboard.plain(f"{run.name} is a float model: it has no quantized layers to take bits from. "
                            "Pick a BSQ or uniform run."))
    st.stop()


@st.cache_resource(max_entries=4, show_spinner="loading the model and a sample of its test set")
def what_if(path: str, stamp: tuple, images: int = analysis.WHAT_IF_IMAGES) -> analysis.WhatIf:
    return analysis.WhatIf(load_run(path), images)


try:
    model = what_if(str(run.path), dashboard.stamp(run.path))
except FileNotFoundError as err:
    st.info(dashboard.plain(err))
    st.stop()
except (DamagedRun, ValueError) as err:  # ValueError: its data no longer matches what it trained on
    st.error(dashboard.plain(f"Run {run.name} cannot be scored: {err}"))
    st.stop()


@st.fragment
def sliders_and_metrics() -> None:  # a slider move re-runs only this, not the page
    top = st.container()  # filled after the sliders are read, shown above them: the answer on the first screen
    chosen = {}
    cols = st.columns(min(4, len(model.bits)))
    for i, (layer, bits) in enumerate(model.bits.items()):
        with cols[i % len(cols)]:
            if bits:
                chosen[layer] = st.slider(layer, 0, bits, bits, key=f"bits_{run.name}_{layer}")
            else:
                st.markdown(f"**{dashboard.plain(layer)}**  \n0 bits: training emptied it")
                chosen[layer] = 0
    now = model.change(chosen)
    m = top.columns(3)
    m[0].metric(f"test accuracy ({model.images:,} images)", f"{100 * now['test_acc']:.1f} %",
                dashboard.delta(100 * now["acc_change"], 1, " points"))
    m[1].metric("average bits", f"{now['avg_bits']:.2f}", dashboard.delta(now["bits_change"], 2),
                delta_color="inverse")
    size = f"{now['compression']:.1f}x vs float32" if now["avg_bits"] else "no weight left"
    m[2].metric("packed weights", f"{now['packed_bytes'] / 1024:.1f} KiB", size, delta_color="off",
                delta_arrow="off")  # a size, not a change: no arrow
    se = 100 * (now["test_acc"] * (1 - now["test_acc"]) / model.images) ** 0.5
    bf16 = " (convolutions in bfloat16, which this CPU computes fast)" if model.in_bf16 else ""
    top.caption(f"Scored on a fixed sample of {model.images:,} test images{bf16}, so that a slider answers at "
                f"once: 1 standard error is {se:.1f} points. The run's own score on all its test images is "
                f"{100 * run.summary.get('test_acc', float('nan')):.1f} %.")
    if top.button("score this choice on every test image", help="in float32, as the run scored itself: seconds "
                                                                  "on a CPU for 10,000 images"):
        with st.spinner("scoring every test image"):
            full = what_if(str(run.path), dashboard.stamp(run.path), 0)
            every = full.change(chosen)
        top.markdown(f"On all {full.images:,} test images: **{100 * every['test_acc']:.1f} %** "
                     f"({100 * every['acc_change']:+.1f} points from the run as trained).")


sliders_and_metrics()
