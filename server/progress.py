"""A progress bar for long admin commands, on a terminal only: one line on stderr, redrawn in place.

A few lines of our own rather than a dependency: one bar, one shape, and the only rule that matters here is
to stay silent when the stream is not a terminal (a pipe, a file, a test, a cron job's mail), so that
output meant for programs holds nothing but what they expect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 30
REDRAW_SECONDS = 0.1


class Progress:
    """Counts work done out of ``total`` (bytes, lines: any unit) and shows it on ``stream`` when it is a
    terminal, at most every REDRAW_SECONDS; ``total`` None shows the count alone."""

    def __init__(
        self,
        stream: TextIO,
        label: str,
        total: int | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._label = label
        self._total = total if total else None
        self._clock = clock
        self._done = 0
        self._next_draw = float("-inf")
        try:
            self.shown = stream.isatty()
        except (AttributeError, ValueError):  # a closed or unusual stream
            self.shown = False

    def advance(self, amount: int) -> None:
        self._done += amount
        if self.shown and self._clock() >= self._next_draw:
            self._next_draw = self._clock() + REDRAW_SECONDS
            self._draw()

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.shown:
            self._draw()
            self._stream.write("\n")
            self._stream.flush()

    def _draw(self) -> None:
        if self._total is None:
            text = f"{self._label}: {self._done}"
        else:
            fraction = min(1.0, self._done / self._total)
            filled = int(fraction * BAR_WIDTH)
            text = f"{self._label}: [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%}"
        self._stream.write("\r" + text)
        self._stream.flush()
