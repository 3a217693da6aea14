"""The bsq-explore command: train | sweep | ls | show | export | app. Bad input: one line, exit code 2."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import sys
import typing
from pathlib import Path

__all__ = ["main", "build_parser"]

EXPLICIT = {"alpha"}  # config fields with their own option in the usage line


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        if message.startswith("unrecognized arguments"):
            options = sorted(o for a in self._actions for o in a.option_strings if o.startswith("--"))
            message += f"; valid options: {' '.join(options)}"
        raise UsageError(message)


def _parse_field(kind, text: str):
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    if typing.get_origin(kind) is tuple:
        return tuple(int(v) for v in text.split(",") if v.strip())
    return kind(text)


def _field_type(kind):
    """The option's type function, named after the field's type for argparse's 'invalid int value'."""
    def parse(text: str):
        return _parse_field(kind, text)
    parse.__name__ = "comma-separated integers" if typing.get_origin(kind) is tuple else kind.__name__
    return parse


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    from .config import BSQConfig

    hints = typing.get_type_hints(BSQConfig)
    group = parser.add_argument_group("config overrides (any BSQConfig field)")
    for f in dataclasses.fields(BSQConfig):
        if f.name in EXPLICIT:
            continue
        kind = hints[f.name]
        help = "cpu, cuda, cuda:N or auto" if f.name == "device" else ""
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, metavar=f.name.upper(),
                           type=_field_type(kind), default=None,
                           help=f"{help} (default {f.default!r})" if help else f"default {f.default!r}")


def _overrides(args) -> dict:
    from .config import BSQConfig

    names = {f.name for f in dataclasses.fields(BSQConfig)} - {"alpha"}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def build_parser() -> Parser:
    from .config import DEFAULT_PRESET

    parser = Parser(prog="bsq-explore", description="Bit-level sparsity quantization you can watch.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    train = sub.add_parser("train", help="run one preset (pretrain -> BSQ -> finetune) into a run folder")
    train.add_argument("--preset", help=f"named configuration (default {DEFAULT_PRESET})")
    train.add_argument("--config", help="a JSON file of config fields (a run.json's config, or - for stdin) "
                                        "instead of a preset")
    train.add_argument("--alpha", type=float)
    train.add_argument("--runs", help="runs root (default $BSQ_RUNS or data/runs of this checkout)")
    train.add_argument("--name", help="run name (default: model, alpha and time)")
    train.add_argument("--resume", action="store_true", help="continue the named run from its checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run of the same name")
    train.add_argument("--tensorboard", metavar="DIR",
                       help="also write each epoch's metrics, bits and bit heatmap as TensorBoard events to DIR")
    train.add_argument("--force", action="store_true",
                       help="resume or overwrite a run marked running on another host (when its process is gone)")
    _add_config_options(train)

    _add_sweep_command(sub)
    _add_reading_commands(sub)
    app = sub.add_parser("app", help="serve the Streamlit app (needs 'bsq_explore[app]')")
    app.add_argument("--port", type=int, default=8501)
    app.add_argument("--address", default="127.0.0.1", help="127.0.0.1: this machine only (README: serving a class)")
    return parser


def find_run(run: str, runs: str | None) -> Path:
    from .paths import EXAMPLES, runs_root
    from .store import check_name

    if Path(run).is_dir():
        return Path(run)
    check_name(run)
    for root in (runs_root(runs), EXAMPLES):
        if (root / run).is_dir():
            return root / run
    raise FileNotFoundError(f"no run {run!r} under {runs_root(runs)} or {EXAMPLES}")


def _numbers(text: str, kind=float) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
        if not all(math.isfinite(v) for v in values):
            raise ValueError
        return values
    except ValueError:
        raise UsageError(f"expected comma-separated {'integers' if kind is int else 'numbers'}, got {text!r}") from None


def _parse_samples(text: str) -> int:
    """--hessian's SAMPLES: a count of Hutchinson samples, at least 1 (leaving the option out means no twins)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"takes a whole number of samples >= 1 (e.g. 32), got {text!r}")
    return int(text)


_MAX_CONFIG = 1 << 20  # a config is a few hundred bytes; a run.json a few KB


def _read_small(path: Path) -> str:
    """A regular file's text, at most _MAX_CONFIG + 1 characters read: /dev/zero or a pipe must not
    fill memory or hang."""
    import os
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a pipe with no writer would block a plain open
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        return file.read(_MAX_CONFIG + 1).decode()


def _read_config(source: str) -> dict:
    """The config fields of a JSON file (or of stdin for '-'): a config, or a run.json holding one."""
    try:
        text = sys.stdin.read(_MAX_CONFIG + 1) if source == "-" else _read_small(Path(source))
        if len(text) > _MAX_CONFIG:
            raise ValueError(f"more than {_MAX_CONFIG:,} characters")
        values = json.loads(text)
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read --config {source}: {err}") from None
    values = values.get("config", values) if isinstance(values, dict) else values
    if not isinstance(values, dict):
        raise UsageError(f"--config {source} holds no JSON object of config fields")
    return values


def _config(args):
    """The config the options describe (preset or --config file, then overrides), or None when a
    --resume names no option: the run's own config then."""
    from .config import DEFAULT_PRESET, BSQConfig, preset

    extra = _overrides(args)
    if args.alpha is not None:
        extra["alpha"] = args.alpha
    if args.preset and args.config:
        raise UsageError("--preset and --config exclude each other")
    if args.config:
        config = BSQConfig.from_dict({**_read_config(args.config), **extra})
        if config.pretrained and not Path(config.pretrained).is_file():  # a sweep run's, whose float model is gone
            raise UsageError(f"--config {args.config} starts from the float model {config.pretrained}, which is not "
                             "there: pass --pretrained FILE, or --pretrained '' --pretrain-epochs N to train one")
        return config
    if args.resume and not args.preset and not extra:
        return None
    return preset(args.preset or DEFAULT_PRESET, **extra)


def _add_sweep_command(sub) -> None:
    from .config import DEFAULT_PRESET, UNIFORM_BITS

    sweep = sub.add_parser("sweep", help="one float model, a BSQ run per alpha, uniform baselines")
    sweep.add_argument("--preset", default=DEFAULT_PRESET)
    sweep.add_argument("--alphas", required=True, help="comma-separated, e.g. 0,0.05,0.1")
    sweep.add_argument("--jobs", type=int, default=1, help="runs side by side (local backend); each uses --threads CPU threads")
    sweep.add_argument("--backend", choices=["local", "ray"], default="local",
                       help="local processes, or one Ray task per run (pip install 'bsq_explore[ray]')")
    sweep.add_argument("--address", help="Ray cluster address, e.g. ray://head:10001 or auto (ray backend)")
    sweep.add_argument("--cpus-per-trial", type=int, default=1,
                       help="CPUs each Ray task asks for (its threads come from --threads)")
    sweep.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs each Ray task asks for")
    sweep.add_argument("--uniform", default=",".join(map(str, UNIFORM_BITS)),
                       help="bits of the uniform baselines ('' for none)")
    sweep.add_argument("--equal-compute", action="store_true",
                       help="finetune the uniform baselines for the BSQ and finetune epochs together "
                            "(as many steps as a BSQ run)")
    sweep.add_argument("--hessian", type=_parse_samples, default=0, metavar="SAMPLES",
                       help="then a Hessian twin of every finished BSQ run: its bits chosen from the float model's "
                            "Hessian traces (SAMPLES Hutchinson samples, e.g. 32) at the BSQ run's average bits")
    sweep.add_argument("--runs")
    sweep.add_argument("--name", help="sweep name (prefix of its runs)")
    _add_config_options(sweep)


def _add_reading_commands(sub) -> None:
    """ls, show and export: the commands that read runs."""
    ls = sub.add_parser("ls", help="list runs with status and summary")
    ls.add_argument("dirs", nargs="*", help="runs roots (default: runs root and data/examples)")

    show = sub.add_parser("show", help="a run's summary and per-layer precision")
    show.add_argument("run", help="run folder, or a run name under the runs root or data/examples")
    show.add_argument("--runs")

    export = sub.add_parser("export", help="write a run's quantized model (integer weights, bits, scales)")
    export.add_argument("run")
    export.add_argument("--out", required=True)
    export.add_argument("--format", choices=["pt", "qonnx", "qcdq"], default="pt",
                        help="pt: the kit's integer weights, bits and scales; qonnx: an ONNX graph with a QONNX "
                             "Quant node at each layer's bit width; qcdq: QuantizeLinear/Clip/DequantizeLinear "
                             "instead, which onnxruntime runs (both need 'bsq_explore[qonnx]')")
    export.add_argument("--runs")


def cmd_app(args) -> int:
    """streamlit run on the app's main.py, in this process's place (Ctrl-C stops the server)."""
    import os

    from .paths import APP

    if importlib.util.find_spec("streamlit") is None:
        raise UsageError("the app needs Streamlit: pip install 'bsq_explore[app]'")
    os.execv(sys.executable, [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
                              "--server.port", str(args.port), "--server.address", args.address])


def cmd_train(args) -> int:
    from contextlib import ExitStack, closing

    from .paths import runs_root
    from .progress import ProgressBar
    from .train import resume, train

    if (args.resume or args.overwrite) and not args.name:
        raise UsageError("--resume and --overwrite need --name of the run")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    config = _config(args)
    with ExitStack() as stack:
        callbacks = [stack.enter_context(closing(ProgressBar(args.name or "train")))]
        if args.tensorboard:
            from .board import TensorBoard

            callbacks.append(stack.enter_context(closing(TensorBoard(args.tensorboard))))
        if args.resume:
            path = resume(runs_root(args.runs) / args.name, config, callbacks=callbacks, force=args.force)
        else:
            path = train(config, runs=args.runs, name=args.name, callbacks=callbacks, overwrite=args.overwrite,
                         force=args.force)
    print(path)
    return 0


def cmd_sweep(args) -> int:
    from .sweep import sweep

    table = sweep(args.preset, _numbers(args.alphas), jobs=args.jobs, runs=args.runs, name=args.name,
                  uniform_bits=_numbers(args.uniform, int), backend=args.backend, address=args.address,
                  cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                  equal_compute=args.equal_compute, hessian=args.hessian, **_overrides(args))
    print(printable(table.to_string(index=False)))
    for error in table.attrs.get("errors", []):
        print(printable(f"failed: {error}"), file=sys.stderr)
    return 1 if table.attrs.get("errors") else 0


def cmd_ls(args) -> int:
    import pandas as pd

    from .catalog import list_runs
    from .paths import EXAMPLES, runs_root

    roots = args.dirs or [runs_root(), EXAMPLES]
    table = list_runs(*roots)
    if table.empty:
        print(printable(f"no runs under {', '.join(map(str, roots))}; start one with: bsq-explore train"))
        return 0
    cols = ["name", "status", "kind", "alpha", "test_acc", "avg_bits", "compression", "epochs", "reason"]
    numbers = {c: pd.to_numeric(table[c], errors="coerce") for c in cols[3:-1]}  # None in an object column
    print(printable(table[cols].assign(**numbers).to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}")))
    return 0


def cmd_show(args) -> int:
    from .catalog import describe
    from .jobs import is_stale
    from .runs import load_run

    run = load_run(find_run(args.run, args.runs))
    info = run.info
    print(printable(f"run        {run.path}"))
    stale = " (stale: its process is gone; train --resume goes on)" if is_stale(info) else ""
    print(printable(f"status     {info['status']}{stale}" + (f" ({info['error']})" if info.get("error") else "")))
    c = run.config
    print(printable(f"config     {c.model} on {c.dataset}, alpha {c.alpha:g}, {c.nbits}-bit start, "
                    f"epochs {c.pretrain_epochs}+{c.bsq_epochs}+{c.finetune_epochs}"))
    for key, text in describe(run.summary).items():
        if run.summary.get(key) is not None:
            print(printable(f"{key:<11} {text}"))
    if not run.layers.empty:
        layers = run.final_layers()[["layer", "kind", "numel", "nbits", "lsb_offset", "scale"]]
        print(printable(layers.to_string(index=False)))
    return 0


def _output(out: Path) -> Path:
    """--out of export: a new path or a regular file, never a link, a device or a file of a run folder."""
    from .store import INFO

    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise UsageError(f"--out {out} is not a regular file: give a new path or a file to replace")
    folder = next((d for d in [out.resolve().parent, *out.resolve().parent.parents] if (d / INFO).is_file()), None)
    if folder is not None:
        raise UsageError(f"--out {out} is inside the run folder {folder}: write the export elsewhere")
    return out


def cmd_export(args) -> int:
    from .analysis import size_table
    from .runs import load_run
    from .stats import size_of
    from .store import MODEL, write_atomic

    run = load_run(find_run(args.run, args.runs))
    out = _output(Path(args.out))
    if run.info["status"] != "finished":
        raise UsageError(f"run {run.name} is {run.info['status']}: only a finished run can be exported")
    if run.kind == "float":
        raise UsageError(f"run {run.name} is a float model: it has no quantized layers to export")
    exported = run.read_model()  # checks it loads (weights only) before anything is written
    content = (run.path / MODEL).read_bytes() if args.format == "pt" else _graph(run, exported, args.format)
    write_atomic(out, content)
    table = size_table(exported)
    for row in table.iloc[:-1].itertuples():
        print(f"  {row.layer}: {row.nbits:.0f} bits x {row.numel} weights = {row.packed_bytes:.0f} bytes packed")
    total, layers = table.iloc[-1], table.iloc[:-1]
    compression = size_of(layers.numel, layers.nbits.astype(int)).compression
    print(f"{out}: {len(content)} bytes on disk ({args.format}); weights {total.packed_bytes:.0f} bytes packed against "
          f"{total.float32_bytes} as float32 ({compression:.1f}x)")
    return 0


def _graph(run, exported: dict, form: str) -> bytes:
    """The run's model as a qonnx or qcdq graph file, checked before its model is built."""
    from .data import load_for_model
    from .export import load_model
    from .graphs import QCDQ_BITS, check_running_max, to_qcdq, to_qonnx

    check_running_max(exported)
    data = load_for_model(run.config, run.info.get("data"))  # no image read when the run records its shape
    model = load_model(run, data).eval()
    if form == "qonnx":
        return to_qonnx(model, tuple(data.shape)).SerializeToString()
    proto, wide = to_qcdq(model, tuple(data.shape))
    if wide:
        kept = ", ".join(f"{layer} ({bits} bits and a sign)" for layer, bits in wide.items())
        print(f"  float weights in the QCDQ graph, the same values: {kept}; QuantizeLinear holds at most "
              f"{QCDQ_BITS}-bit integers")
    return proto.SerializeToString()


def main(argv: list[str] | None = None) -> int:
    """Run the command; bad input (also an unwritable runs root) is one line and exit code 2, a run
    that fails once training has begun is one line and exit code 1 (its folder keeps the reason),
    a stopped run (Ctrl-C, or SIGTERM from train.stop) is exit code 130."""
    import signal
    import threading

    def stop(signum, frame):  # SIGTERM ends a run as Ctrl-C does: marked stopped, resumable
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if main_thread else None
    try:
        return _main(argv)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return {"train": cmd_train, "sweep": cmd_sweep, "ls": cmd_ls, "show": cmd_show,
                "export": cmd_export, "app": cmd_app}[args.command](args)
    except SystemExit as done:  # argparse exits after printing --help
        return done.code if isinstance(done.code, int) else 0
    except KeyboardInterrupt:
        print("bsq-explore: stopped (a run keeps its finished epochs: train --resume goes on)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bsq-explore ls | head`: the reader left; nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # else the flush at exit complains
        return 0
    except Exception as err:
        return _report(err)


def _report(err: Exception) -> int:
    """Print err in one line; return its exit code. The modules that define errors are imported
    here, not up front, so that --help and bad options answer without importing torch."""
    from .runs import DamagedRun

    train = sys.modules.get(f"{__package__}.train")  # never imported: no run of it can have failed (and no torch)
    if train is not None and isinstance(err, train.RunFailed):
        print(printable(f"bsq-explore: {err}".splitlines()[0]), file=sys.stderr)
        return 1
    if isinstance(err, (UsageError, ValueError, TypeError, OSError, DamagedRun)):
        print(printable(f"bsq-explore: error: {err}".splitlines()[0]), file=sys.stderr)
        return 2
    print(printable(f"bsq-explore: failed: {type(err).__name__}: {err}".splitlines()[0]), file=sys.stderr)
    return 1


def printable(text: str) -> str:
    """text with every control character (an ANSI escape from a run.json or a folder name) shown as
    a \\x.. escape, so a run folder cannot drive the terminal."""
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


if __name__ == "__main__":
    sys.exit(main())
