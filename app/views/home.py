"""Start here: what BSQ does, how to read a bit heatmap (on a shipped run), and where to go next."""
import streamlit as st

from bsq_explore import analysis, catalog, dashboard, plots

st.title("Watch bits die")
st.markdown(
    "**BSQ** (bit-level sparsity quantization, Yang et al., ICLR 2021) stores every weight of a network as "
    "**bit planes**: one plane per bit, each holding that bit of every weight of a layer (a weight's sign "
    "picks whether its digits sit in the *pos* or the *neg* planes). Training adds a **penalty** on each "
    "plane's size, its group norm, weighted by the layer's share of the model's weights. The penalty pushes "
    "whole planes towards zero; every few epochs the weights are rounded back to bits, and a plane that came "
    "out all zero is **removed**: its layer now needs one bit fewer. Each layer ends at the precision it "
    "needs, and **alpha**, the penalty's strength, trades accuracy against size.")
table = dashboard.all_runs()
name = analysis.featured(table) if len(table) else None
run = dashboard.open_run(name) if name else None
if run is not None and not run.bits.empty:
    st.subheader("How to read a bit heatmap")
    left, right = st.columns([3, 2])
    with left:
        dashboard.chart(plots.run_heatmap(run), key="example")
    right.markdown(
        f"This is **{run.name}** at the end of its training.\n\n"
        "- each **row** is a layer, in network order;\n"
        "- each **column** is one bit of its weights, the most significant on the left;\n"
        "- the **colour** is the plane's *density*: the share of the layer's weights that use that bit "
        "(dark: few; hover a cell for its number);\n"
        "- **grey** means the plane was removed: the layer no longer stores that bit.\n\n"
        "Top bits die first: few weights are large enough to need them, and big layers lose most, "
        "because the penalty weighs a plane by its layer's size.")
sweeps = sorted(table.sweep.dropna().unique()) if len(table) else []
if sweeps:  # each sweep's verdict, computed from its runs as they stand
    st.subheader("What the sweeps show")
    for sweep in sweeps:
        part = catalog.sweep_table(table, sweep)
        unfinished = int((part.status != "finished").sum())  # training, stopped, failed: the verdict may change
        note = f" Not final: {unfinished} of its {len(part)} runs {'has' if unfinished == 1 else 'have'} not finished." \
            if unfinished else ""
        st.markdown(f"**{dashboard.plain(sweep)}**: {dashboard.plain(analysis.verdict_sentence(part))}{note}")
st.subheader("Where next")
links = [("views/sweep.py", "Sweep: accuracy against size for every alpha, and BSQ against uniform bits",
          ":material/scatter_plot:"),
         ("views/heatmap.py", "Bit heatmap: any run, epoch by epoch, and when each plane died", ":material/grid_on:"),
         ("views/precision.py", "Precision: each layer's bits over training", ":material/timeline:"),
         ("views/compare.py", "Compare: two runs side by side, their stages aligned", ":material/compare:"),
         ("views/whatif.py", "What if: take bits from a trained layer and see accuracy and size", ":material/tune:"),
         ("views/train.py", "Train: start a run and watch it", ":material/play_arrow:"),
         ("views/playground.py", "Playground: split your own tensor into bit planes", ":material/science:"),
         ("views/runs.py", "Runs: every run on disk, with its status", ":material/table_rows:")]
for page, label, icon in links:
    st.page_link(page, label=label, icon=icon)
with st.expander("Words used on these pages"):
    st.markdown(
        "- **density**: the share of a layer's weights whose integer has that bit set.\n"
        "- **norm**: a plane's group norm, what the penalty shrinks; shown over its layer's largest.\n"
        "- **alpha**: the penalty's strength; 0 is plain quantization-aware training at 8 bits.\n"
        "- **average bits**: bits per weight over the quantized layers, weighted by their sizes.\n"
        "- **compression**: 32 / average bits, against float32 weights.\n"
        "- **epochs** read as stage and epoch: *pretrain* (float), *bsq* (bit planes; epoch 0 is the model "
        "just converted to 8 bits), *finetune* (precision frozen).\n"
        "- **uniform k-bit**: a baseline with every layer at k bits, finetuned as long as the BSQ runs.\n"
        "- **Hessian twin**: a BSQ run's size, its bits per layer chosen from each layer's Hessian trace "
        "(HAWQ), then finetuned as the baselines are.")
