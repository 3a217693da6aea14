"""What if a layer had fewer bits? Drop low bits per layer and see accuracy and size at once."""
import streamlit as st

from bsq_explore import analysis, dashboard
from bsq_explore.runs import load_run

st.title("What if")
st.caption("Each slider keeps that many of the layer's bits; the dropped low bits are rounded away.")
run = dashboard.pick_run(finished_only=True)
if run is None:
    st.stop()


@st.cache_resource(max_entries=4, show_spinner="loading the model and its test set")
def what_if(path: str, stamp: tuple) -> analysis.WhatIf:
    return analysis.WhatIf(load_run(path))


try:
    model = what_if(str(run.path), dashboard.stamp(run.path))
except FileNotFoundError as err:
    st.info(str(err))
    st.stop()
base = model.evaluate()
chosen = {}
cols = st.columns(min(4, len(model.bits)))
for i, (layer, bits) in enumerate(model.bits.items()):
    with cols[i % len(cols)]:
        chosen[layer] = st.slider(layer, 0, bits, bits, key=f"bits_{run.name}_{layer}") if bits else 0
now = model.evaluate(chosen)
m = st.columns(3)
m[0].metric("test accuracy", f"{now['test_acc']:.3f}", f"{now['test_acc'] - base['test_acc']:+.3f}")
m[1].metric("average bits", f"{now['avg_bits']:.2f}", f"{now['avg_bits'] - base['avg_bits']:+.2f}", delta_color="inverse")
m[2].metric("packed weights", f"{now['packed_bytes'] / 1024:.1f} KiB", f"{now['compression']:.1f}x vs float32",
            delta_color="off")
