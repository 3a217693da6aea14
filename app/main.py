"""bsq_explore app entry point (placeholder until the app issue lands)."""
import streamlit as st

st.set_page_config(page_title="bsq_explore", page_icon="🧮")
st.title("bsq_explore")
st.warning("The app is not built yet. The engine is in the `bsq_explore` package; see README.md.")
