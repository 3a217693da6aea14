"""Start a run in the background and watch its bits die while it trains; stop it from here."""
import streamlit as st

from bsq_explore import catalog, dashboard, jobs, plots, runs
from bsq_explore.catalog import describe, list_runs
from bsq_explore.config import MAX_EPOCHS, PRESETS, preset

st.title("Train")


def default_name() -> str:
    return runs.run_name(preset(st.session_state.train_preset, alpha=st.session_state.train_alpha),
                         st.session_state.train_preset) + "-app"


def follow() -> None:  # the default name follows preset and alpha until the user types one
    if not st.session_state.get("train_name_typed"):
        st.session_state.train_name = default_name()


def take_preset() -> None:  # a preset brings its own alpha and BSQ epochs: alpha 0.3 would collapse Fashion-MNIST
    chosen = preset(st.session_state.train_preset)
    st.session_state.update(train_alpha=chosen.alpha, train_epochs=chosen.bsq_epochs)
    follow()


if "train_preset" not in st.session_state:
    st.session_state.train_preset = next(iter(PRESETS))
    take_preset()
c = st.columns(3)
c[0].selectbox("preset", list(PRESETS), key="train_preset", on_change=take_preset)
c[1].number_input("alpha", min_value=0.0, step=0.05, format="%.3f", key="train_alpha", on_change=follow,
                  help="the strength of the bit penalty: larger kills more bit planes")
c[2].number_input("BSQ epochs", min_value=1, max_value=MAX_EPOCHS, step=5, key="train_epochs")
st.text_input("run name", key="train_name", on_change=lambda: st.session_state.update(train_name_typed=True))
planned = preset(st.session_state.train_preset, bsq_epochs=int(st.session_state.train_epochs))
per_epoch = dashboard.epoch_seconds(planned.model, planned.dataset)
st.caption(dashboard.plain(
    f"{catalog.schedule_text(planned)}: {planned.epoch_count()} epochs in all"
    + (f", about {dashboard.duration(planned.epoch_count() * per_epoch)} at the pace of the shipped "
       f"{planned.model} runs ({per_epoch:.3g} s an epoch on the 2-core machine they trained on)" if per_epoch else "")
    + "."))


if st.button("start training", type="primary"):
    name = st.session_state.train_name
    try:
        root = dashboard.write_root()
        config = preset(st.session_state.train_preset, alpha=st.session_state.train_alpha,
                        bsq_epochs=int(st.session_state.train_epochs))
        dashboard.launched().append(jobs.start(config, root, name, dashboard.max_app_runs()))
        st.session_state["watching"] = name
        st.success(dashboard.plain(f"started {name} in {root}; it keeps running if you close this page"))
    except (ValueError, FileExistsError) as err:
        st.error(dashboard.plain(err))


def progress(run) -> None:
    """The run's stage, epoch, accuracy and bits, as a bar."""
    total, done = run.config.epoch_count(), len(run.metrics)
    text = f"{run.name}: {run.info['status']}"
    if done:
        last = run.metrics.iloc[-1]
        text += (f", {last.stage} epoch {last.epoch} ({done} of {total} epochs), "
                 f"test accuracy {100 * last.test_acc:.1f} %, {last.avg_bits:.2f} bits")
    st.progress(min(done / max(total, 1), 1.0), text=text)


@st.fragment(run_every=1)  # a digits run ends in seconds: a refresh every second shows it train
def watch() -> None:
    """Every run in progress under the runs root (read from disk, so a reload keeps it), each with
    a stop button, then the run started here: its curves and bit heatmap as it trains."""
    table = list_runs(dashboard.write_root())
    live = table[table.status == "running"]
    if len(live):
        st.subheader("Runs in progress")
    for name in live.name:
        run = dashboard.open_run(name)
        if run is None:
            continue
        left, right = st.columns([5, 1])
        with left:
            progress(run)
        if right.button("stop", key=f"stop_{name}", help="end the run now; its finished epochs stay, and "
                                                          "`bsq-explore train --resume` goes on"):
            try:
                jobs.stop(run.path)
                st.toast(dashboard.plain(f"stopping {name}"))
            except ValueError as err:
                st.error(dashboard.plain(err))
    name = st.session_state.get("watching")
    if not name:
        return
    run = dashboard.open_run(name) if dashboard.find(name) else None
    failed = next((launch.error() for launch in reversed(dashboard.launched()) if launch.name == name), None)
    if run is None and failed:
        st.error(dashboard.plain(f"{name} did not start: {failed}"))
        return
    if run is None:
        st.info(dashboard.plain(f"waiting for {name} to write its first epoch…"))
        return
    st.subheader(name)
    if run.info["status"] != "running":
        progress(run)
    if run.info.get("error"):
        st.error(dashboard.plain(run.info["error"]))
    if run.info["status"] == "finished":
        text = describe(run.summary)
        st.success(dashboard.plain(f"{name} finished: {text['test_acc']} test accuracy, {text['avg_bits']} bits per "
                                   f"weight ({text['compression']})"))
        st.page_link("views/heatmap.py", label=f"Open {name} in the bit heatmap", icon=":material/grid_on:",
                     query_params={"run": name})
    if len(run.metrics):
        dashboard.chart(plots.compare_metrics({name: run.metrics}), key="live_curves")
    if not run.bits.empty:
        dashboard.chart(plots.bit_heatmap(run.bits), key="live_heatmap")


watch()
st.caption("Runs started here are written to the server's runs root ($BSQ_RUNS, else data/runs), whatever the "
           "sidebar shows:")
st.code(str(dashboard.write_root()), language=None)
