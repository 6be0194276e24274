"""What a person watching the grid sees: one line per finished cell, and a progress bar on a terminal (the console
settings that keep library request logs and colour codes out of the output: ``oskt.cli.common.console_defaults``).

A cell line::

    [12/30] S2 wtsel synth_a→synth_b  mAP 17.9  R1 21.5 · 41 s · ETA 5 min
    [3/30] S1 oskt synth_a→synth_a  mAP 52.7  R1 60.1 · reused

The ETA is the grid's wall-clock time per trained cell so far times the cells still to train (reused cells cost
nothing), so it already accounts for how many cells run side by side.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from oskt.pipeline.records import CellResult
from oskt.train.loop import duration


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _pct(v: float | None) -> str:
    if v is None or v != v:
        return "?"
    return f"{100 * v:.1f}" if v <= 1.0 else f"{v:.1f}"


class GridProgress:
    """Prints a line per finished cell (and drives a tqdm bar when ``stream`` is a terminal).

    Args:
        total: cells in the grid.
        stream: where the lines go (default stdout).
        bar: show a progress bar (default: when ``stream`` is a terminal).
    """

    def __init__(self, total: int, stream: TextIO | None = None, bar: bool | None = None) -> None:
        self.total, self.done, self.trained = total, 0, 0
        self.stream = stream or sys.stdout
        self.t0 = time.perf_counter()
        self._bar = None
        if bar if bar is not None else _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="cell", desc="grid", leave=False, dynamic_ncols=True)

    def __getstate__(self) -> dict[str, object]:
        # Prefect ships the grid flow's context, closure included, to every Ray worker: the copy there is never
        # called, and a stream (pytest's capture, a log file) or a tqdm bar cannot be pickled
        return {**self.__dict__, "stream": None, "_bar": None}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self.stream = sys.stdout

    def line(self, r: CellResult) -> str:
        """The line of a finished cell."""
        t = r.tags
        src, _, tgt = t.get("scenario", "").partition("->")
        head = f"[{self.done}/{self.total}] {t.get('student', '')} {t.get('method', '')} {src}→{tgt}"
        score = f"mAP {_pct(r.metrics.get('mAP'))}  R1 {_pct(r.metrics.get('rank1'))}"
        if r.skipped:
            return f"{head}  {score} · reused"
        elapsed = time.perf_counter() - self.t0
        left = self.total - self.done
        eta = f" · ETA {duration(elapsed / self.trained * left)}" if left and self.trained else ""
        return f"{head}  {score} · {duration(r.seconds)}{eta}"

    def __call__(self, r: CellResult) -> None:
        self.done += 1
        self.trained += 0 if r.skipped else 1
        text = self.line(r)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
