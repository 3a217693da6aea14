"""Every run under the runs roots, with its status and summary; damaged runs with the reason."""
import streamlit as st

from bsq_explore import catalog, dashboard

st.title("Runs")
st.caption("BSQ stores every weight as bit planes and a group Lasso kills whole planes: each run "
           "below logged, epoch by epoch, which bits of which layer were still alive.")
table = dashboard.all_runs()
if table.empty:
    dashboard.empty_state()
    st.stop()
damaged = table[table.status == "damaged"]
if len(damaged):
    st.warning(dashboard.plain(f"{len(damaged)} damaged run(s): "
                               + "; ".join(f"{n}: {r}" for n, r in zip(damaged.name, damaged.reason))))
dashboard.run_table(table)
run = dashboard.pick_run("open a run")
if run is not None:
    text = catalog.describe(run.summary)
    cols = st.columns(4)
    cols[0].metric("status", run.info["status"])
    cols[1].metric("test accuracy", text["test_acc"])
    cols[2].metric("average bits", text["avg_bits"])
    cols[3].metric("compression", text["compression"])
    st.page_link("views/heatmap.py", label="Open its bit heatmap", icon=":material/grid_on:", query_params={"run": run.name})
