"""Stage-aware x axes of per-epoch frames: 'bsq 12' labels, logged steps, and stages aligned across runs."""
from __future__ import annotations

import pandas as pd

from .config import STAGES

__all__ = ["epoch_labels", "logged_steps", "last_step", "aligned_steps"]


def epoch_labels(frame: pd.DataFrame) -> pd.Series:
    """'bsq 12' style labels, one per row, from the stage and epoch columns."""
    return frame.stage.astype(str) + " " + frame.epoch.astype(str)


def logged_steps(frame: pd.DataFrame) -> tuple[list[int], list[str]]:
    """The distinct steps of a frame in order, with their 'bsq 12' labels."""
    steps = frame.drop_duplicates("step").sort_values("step")
    return steps.step.astype(int).tolist(), epoch_labels(steps).tolist()


def last_step(frame: pd.DataFrame, stage: str | None = None) -> int:
    """The frame's last step, or the last step of its rows of stage when it has any."""
    rows = frame[frame.stage == stage] if stage is not None else frame
    return int((rows if len(rows) else frame).step.max())


def aligned_steps(frames: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.Series], pd.DataFrame]:
    """x positions that align the stages of several runs' frames (stage and epoch columns): each
    stage starts at one position in every run and is as wide as its longest run, so BSQ epoch 1
    lines up whether a run pretrained for 30 epochs or for none. Returns each frame's positions
    (a Series per name, by row) and ticks (position, 'bsq 1' label) at every stage's first epoch and
    the last one; of two within a tenth of the axis (their labels would overlap), only the later."""
    spans = {}
    for frame in frames.values():
        for stage, rows in frame.groupby("stage"):
            lo, hi = spans.get(stage, (rows.epoch.min(), rows.epoch.max()))
            spans[stage] = (min(lo, rows.epoch.min()), max(hi, rows.epoch.max()))
    start, offset = {}, 0
    for s in STAGES:
        if s in spans:
            lo, hi = spans[s]
            start[s] = offset - int(lo)
            offset += int(hi - lo) + 1
    positions = {name: frame.stage.map(start) + frame.epoch for name, frame in frames.items()}
    if not spans:  # no epoch logged yet
        return positions, pd.DataFrame(columns=["position", "label"])
    last = max(spans, key=STAGES.index)
    marks = sorted({(start[stage] + int(lo), f"{stage} {int(lo)}") for stage, (lo, _) in spans.items()}
                   | {(start[last] + int(spans[last][1]), f"{last} {int(spans[last][1])}")})
    ticks = []
    for position, label in marks:
        if ticks and position - ticks[-1][0] < offset / 10:
            ticks.pop()  # of two marks too close to read, the later: a short stage's start yields to the next
        ticks.append((position, label))
    return positions, pd.DataFrame(ticks, columns=["position", "label"])
