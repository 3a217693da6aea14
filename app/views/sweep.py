"""One alpha sweep: accuracy against compression, per-layer bits per alpha, and any run's heatmap."""
import streamlit as st

from bsq_explore import analysis, dashboard, plots, runs

st.title("Sweep")
table = dashboard.all_runs()
sweeps = sorted(s for s in table.sweep.dropna().unique())
if not sweeps:
    st.info("No sweeps yet. Run one with `bsq-explore sweep --preset digits-mlp --alphas 0,0.1,0.2,0.3 --jobs 2`.")
    st.stop()
wanted = st.query_params.get("sweep")
name = st.selectbox("sweep", sweeps, index=sweeps.index(wanted) if wanted in sweeps else 0)
st.query_params["sweep"] = name
sweep = runs.sweep_table(table, name)
event = st.plotly_chart(plots.pareto(sweep), on_select="rerun", selection_mode="points")
bsq = runs.finished_bsq(sweep)
opened = [r for r in (dashboard.open_run(n) for n in bsq.name) if r is not None]
st.plotly_chart(plots.layer_precision_bars(analysis.sweep_layers(opened)))
st.dataframe(sweep, hide_index=True)
st.subheader("BSQ against uniform quantization")
st.caption("For each uniform k-bit baseline: the most accurate BSQ run of at most k average bits (gain: its "
           "accuracy minus the baseline's, in points), and the smallest BSQ run within half a point of the "
           "baseline (size ratio above 1: BSQ is smaller). Final test accuracies.")
st.dataframe(analysis.verdict(sweep), hide_index=True, column_config=dashboard.VERDICT_COLUMNS)
if bsq.empty:
    st.stop()
clicked = [p.get("customdata") for p in event.selection.points] if event and event.selection else []
names = bsq.name.tolist()
pick = st.selectbox("alpha", names, index=names.index(clicked[0]) if clicked and clicked[0] in names else 0,
                    format_func=lambda n: f"α = {bsq.set_index('name').alpha[n]:g}  ({n})")
run = dashboard.open_run(pick)
if run is not None and not run.bits.empty:
    st.plotly_chart(plots.bit_heatmap(run.bits))
    st.page_link("views/heatmap.py", label=f"Open {pick} in the bit heatmap", icon=":material/grid_on:", query_params={"run": pick})
