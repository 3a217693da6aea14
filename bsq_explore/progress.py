"""A progress bar over a run's epochs: the training callback the CLI and notebooks add."""
from __future__ import annotations

__all__ = ["ProgressBar"]


class ProgressBar:
    """tqdm.auto (terminal or notebook) over a run's epochs, with its stage, accuracy and bits.

    It appears with the first epoch, sized from it (a resumed run starts part way), so an error
    before training prints alone. close() it when a run stops early: its error then prints below.
    """

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def __call__(self, event) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=event.total, initial=event.index - 1, desc=self.desc, unit="epoch")
        self.bar.update(1)
        self.bar.set_postfix(stage=event.stage, acc=f"{event.metrics['test_acc']:.3f}",
                             bits=f"{event.metrics['avg_bits']:.2f}")
        if event.index == event.total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
