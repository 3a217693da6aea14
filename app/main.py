"""bsq_explore: watch bits die. Run with `make app` or `streamlit run app/main.py`."""
import streamlit as st

from bsq_explore import dashboard

st.set_page_config(page_title="bsq_explore", page_icon="🔢", layout="wide", initial_sidebar_state="collapsed")
dashboard.style()
dashboard.sidebar()
pages = [
    st.Page("views/home.py", title="Start here", icon=":material/school:", default=True),
    st.Page("views/runs.py", title="Runs", icon=":material/table_rows:"),
    st.Page("views/heatmap.py", title="Bit heatmap", icon=":material/grid_on:"),
    st.Page("views/precision.py", title="Precision", icon=":material/timeline:"),
    st.Page("views/sweep.py", title="Sweep", icon=":material/scatter_plot:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("views/whatif.py", title="What if", icon=":material/tune:"),
    st.Page("views/train.py", title="Train", icon=":material/play_arrow:"),
    st.Page("views/playground.py", title="Playground", icon=":material/science:"),
]
if dashboard.max_app_runs() == 0:  # served read-only: no page starts or stops a process
    pages = [p for p in pages if p.title != "Train"]
st.navigation(pages, position="top").run()  # the pages along the top: charts get the full width
