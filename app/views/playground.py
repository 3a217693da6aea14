"""A small tensor split into bit planes: see the representation and its reconstruction error."""
import streamlit as st
import torch

from bsq_explore import dashboard, lessons, plots, uploads

st.title("Playground")
st.caption(r"Each weight is $w = s \cdot \sum_b 2^b\,(\mathrm{pos}_b - \mathrm{neg}_b) \,/\, (2^n - 1)$, $s$ its "
           r"layer's scale and $n$ its bits: its sign decides whether its digits sit in the pos planes or the neg planes.")
source = st.radio("tensor", ["random", "upload (.npy, .pt, .csv)"], horizontal=True)
if source == "random":
    c = st.columns(3)
    rows, cols = c[0].slider("rows", 2, 32, 8), c[1].slider("columns", 2, 32, 12)
    seed = c[2].number_input("seed", 0, 10_000, 0)
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(int(seed)))
else:
    upload = st.file_uploader(f"a tensor of real numbers, at most {uploads.MAX_UPLOAD:,} of them",
                              type=["npy", "pt", "csv"])
    if upload is None:
        st.stop()
    try:
        w = uploads.read_tensor(upload.name, upload.getvalue())
    except ValueError as err:
        st.error(dashboard.plain(err))
        st.stop()
nbits = st.slider("nbits", 1, 8, 4)
dashboard.chart(plots.bit_planes_image(w, nbits))
dashboard.chart(plots.error_curves(w, nbits))
st.dataframe(lessons.reconstruction_errors(w, 8), hide_index=True, height="content", column_config={
    "nbits": st.column_config.NumberColumn("bits"),
    "max_abs_error": st.column_config.NumberColumn("largest error", format="%.2e"),
    "rmse": st.column_config.NumberColumn("RMS error", format="%.2e"),
    "bound": st.column_config.NumberColumn("bound", help="half a quantization step: scale / (2 (2^n − 1))",
                                           format="%.2e")})
