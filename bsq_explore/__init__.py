"""bsq_explore: the version and the verbs a user starts with (preset, resume, load_run, convert_, ...), lazily."""
__version__ = "0.1.0"

# The verbs a user starts with, each imported on first use so that `import bsq_explore` stays light.
# train and sweep are modules of the same name: from bsq_explore.train import train.
_VERBS = {"preset": "config", "BSQConfig": "config", "resume": "train", "fit": "train", "load_run": "runs",
          "list_runs": "catalog", "convert_": "layers", "requantize_": "bsq", "bit_lasso": "bsq", "ProgressBar": "progress"}
__all__ = sorted(_VERBS)


def __getattr__(name: str):
    if name in _VERBS:
        from importlib import import_module

        return getattr(import_module(f".{_VERBS[name]}", __name__), name)
    raise AttributeError(f"module 'bsq_explore' has no attribute {name!r}")
