"""One alpha sweep: the verdict in a sentence, accuracy against compression, any run's heatmap, per-layer bits on request."""
import streamlit as st

from bsq_explore import analysis, catalog, dashboard, plots
from bsq_explore.config import preset
from bsq_explore.runs import DamagedRun

st.title("Sweep")
table = dashboard.all_runs()
name = dashboard.pick_sweep(table)
if name is None:
    st.info("No sweeps yet. Run one with `bsq-explore sweep --preset digits-mlp --alphas 0,0.1,0.2,0.3 --jobs 2`.")
    st.stop()
sweep = catalog.sweep_table(table, name)
schedule = catalog.sweep_config(table, name)
if schedule is not None:
    paper = preset("cifar10-resnet20")
    st.caption(dashboard.plain(
        f"One float model, then one BSQ run per alpha (the penalty's strength) and uniform k-bit baselines from it. "
        f"Schedule: {catalog.schedule_text(schedule)}"
        + (f" (the paper's recipe: {catalog.schedule_text(paper)}, on a GPU)" if schedule.model == paper.model else "")
        + "."))
verdict, pairs = analysis.verdict(sweep), analysis.twins(sweep)
st.markdown(f"**{dashboard.plain(analysis.verdict_sentence(sweep))}** {dashboard.plain(analysis.twins_sentence(pairs))}")
event = dashboard.chart(plots.pareto(sweep), on_select="rerun", selection_mode="points", key="pareto")
bsq = catalog.finished_bsq(sweep)
if not bsq.empty:  # a clicked point opens its run right here, under the chart
    clicked = [p.get("customdata") for p in event.selection.points] if event and event.selection else []
    pick = dashboard.pick_alpha(table[table.sweep == name], clicked)
    run = dashboard.open_run(pick)
    if run is not None and not run.bits.empty:
        dashboard.chart(plots.run_heatmap(run))
        st.page_link("views/heatmap.py", label=f"Open {pick} in the bit heatmap", query_params={"run": pick})
    twin = pairs[pairs.bsq == pick].hessian
    hessian = dashboard.open_run(twin.iloc[0]) if len(twin) else None
    try:
        traces = hessian.read_traces() if hessian is not None else None
    except DamagedRun as err:
        st.error(dashboard.plain(f"Run {hessian.name} is damaged: {err}"))
        traces = None
    if run is not None and traces is not None:
        dashboard.chart(plots.twin_bits(run.final_layers(), hessian.final_layers(), traces))
        st.page_link("views/compare.py", label=f"Compare {pick} with its Hessian twin {hessian.name}",
                     query_params={"run": pick, "other": hessian.name})
if len(verdict):  # without a finished baseline the sentence above says so, and the table would be empty
    st.subheader("BSQ against uniform quantization")
    st.caption("For each uniform k-bit baseline: the most accurate BSQ run of at most k average bits (gain: its "
               "accuracy minus the baseline's, in points), and the smallest BSQ run within half a point of the "
               "baseline (size ratio above 1: BSQ is smaller). Final test accuracies.")
    dashboard.verdict_table(verdict)
chosen = analysis.verdict(sweep, "hessian")  # the twins against the same baselines
if len(pairs) and len(chosen):
    st.subheader("Hessian-chosen bits against uniform quantization")
    st.markdown(f"**{dashboard.plain(analysis.verdict_sentence(sweep, 'hessian'))}**")
    st.caption("The same questions of the Hessian twins: the most accurate twin of at most k average bits, and the "
               "smallest twin within half a point of the baseline.")
    dashboard.verdict_table(chosen)
if len(pairs):
    st.subheader("BSQ against Hessian-chosen bits")
    st.caption("Each BSQ run beside its Hessian twin: the same float model, every layer's bits chosen from its "
               "Hessian trace to fit the BSQ run's average bits, then finetuned as the uniform baselines are. "
               "Gain: BSQ's accuracy minus the twin's, in points (above 0, BSQ is more accurate).")
    dashboard.twin_table(pairs)
# on request: it opens every BSQ run of the sweep, a fifth of the page's first draw on digits (benchmarks/app.py)
if not bsq.empty and dashboard.url_toggle("Show every alpha's final bits per layer", "layers"):
    opened = [r for r in (dashboard.open_run(n) for n in bsq.name) if r is not None]
    layers = analysis.sweep_layers(opened)
    dashboard.chart(plots.layer_precision_bars(layers, plots.alpha_colors(sweep.alpha.dropna())))
    if (layers.nbits == 0).any():
        st.caption("No bar: that alpha left the layer 0 bits. Training emptied it, and every one of its weights is 0.")
st.subheader("Every run of the sweep")
dashboard.static_run_table(sweep)
