"""Two runs side by side: heatmaps at the same point of training, and their curves on shared axes."""
import streamlit as st

from bsq_explore import axes, dashboard, plots

st.title("Compare")
left, right = st.columns(2)
with left:
    a = dashboard.pick_run("first run", key="run")
with right:
    b = dashboard.pick_run("second run", key="other", avoid=a.name if a else None)
if a is None or b is None:
    st.stop()
which = dashboard.url_radio("epoch", ["final", "end of BSQ"],
                            help="the heatmaps at each run's last epoch, or at its last BSQ epoch (before finetuning)")
figs = {}
for run in (a, b):
    if not run.bits.empty:
        figs[run.name] = plots.bit_heatmap(run.bits, axes.last_step(run.bits, "bsq" if which == "end of BSQ" else None))
        figs[run.name].update_layout(title_text=f"{run.name}<br>{figs[run.name].layout.title.text}", margin_t=80)
plots.share_bit_columns_(*figs.values())
for col, run in zip(st.columns(2), (a, b)):
    with col:
        if run.name not in figs:
            st.info(dashboard.plain(f"{run.name} has no bit frames: it is a float run or has not reached BSQ training yet."))
            continue
        dashboard.chart(figs[run.name], key=f"heat_{run.name}")
        final = run.final_layers()[["layer", "numel", "nbits"]]
        dashboard.static_table(final.rename(columns={"numel": "weights", "nbits": "final bits"}))
st.caption("Curves are aligned by stage: BSQ epoch 1 sits at the same place for both runs, whatever their float "
           "pretraining (a sweep's runs start from its shared float model).")
dashboard.chart(plots.compare_metrics({a.name: a.metrics, b.name: b.metrics}))
