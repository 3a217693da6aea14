"""bsq_explore: watch bits die. Run with `make app` or `streamlit run app/main.py`."""
import streamlit as st

from bsq_explore import dashboard

st.set_page_config(page_title="bsq_explore", page_icon="🔢", layout="wide", initial_sidebar_state="collapsed")
dashboard.style()
dashboard.sidebar()
pages = [  # no icons: at 1024 px the nine titles then fit the top bar, none hidden under "1 more"
    st.Page("views/home.py", title="Start here", default=True),
    st.Page("views/runs.py", title="Runs"),
    st.Page("views/heatmap.py", title="Bit heatmap"),
    st.Page("views/precision.py", title="Precision"),
    st.Page("views/sweep.py", title="Sweep"),
    st.Page("views/compare.py", title="Compare"),
    st.Page("views/whatif.py", title="What if"),
    st.Page("views/train.py", title="Train"),
    st.Page("views/playground.py", title="Playground"),
]
if dashboard.max_app_runs() == 0:  # served read-only: no page starts or stops a process
    pages = [p for p in pages if p.title != "Train"]
st.navigation(pages, position="top").run()  # the pages along the top: charts get the full width
