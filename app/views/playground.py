"""A small tensor split into bit planes: see the representation and its reconstruction error."""
import io

import numpy as np
import streamlit as st
import torch

from bsq_explore import analysis, dashboard, plots

st.title("Playground")
st.caption("Each weight is scale × (Σ 2^b (pos_b − neg_b)) / (2^n − 1): its sign decides whether its digits "
           "sit in the pos planes or the neg planes.")
source = st.radio("tensor", ["random", "upload (.npy, .pt, .csv)"], horizontal=True)
if source == "random":
    c = st.columns(3)
    rows, cols = c[0].slider("rows", 2, 32, 8), c[1].slider("columns", 2, 32, 12)
    seed = c[2].number_input("seed", 0, 10_000, 0)
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(int(seed)))
else:
    upload = st.file_uploader("a small 1-d or 2-d tensor", type=["npy", "pt", "csv"])
    if upload is None:
        st.stop()
    raw = upload.getvalue()
    try:
        if upload.name.endswith(".npy"):
            w = torch.from_numpy(np.load(io.BytesIO(raw), allow_pickle=False)).float()
        elif upload.name.endswith(".pt"):
            w = torch.load(io.BytesIO(raw), weights_only=True).float()
        else:
            w = torch.from_numpy(np.loadtxt(io.StringIO(raw.decode()), delimiter=",", ndmin=2)).float()
    except Exception as err:  # any unreadable upload is a one-line message, not a traceback
        st.error(f"could not read {upload.name}: {type(err).__name__}: {err}")
        st.stop()
nbits = st.slider("nbits", 1, 8, 4)
dashboard.chart(plots.bit_planes_image(w, nbits))
errors = analysis.reconstruction_errors(w, 8)
st.line_chart(errors.set_index("nbits")[["max_abs_error", "rmse", "bound"]])
st.dataframe(errors, hide_index=True)
