"""Progress of a training run on stderr: a live bar on a terminal, plain lines in a log.

On a terminal one line overwrites itself (carriage return) at every step. Anywhere else
(a log file, a pipe, CI) carriage returns pile up into one huge line, so a full line is
printed about every tenth of the run and at its last step instead. ``close()`` ends an
unfinished bar line, so that what is printed next (an error) starts on a line of its own.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

PLAIN_LINES = 10  # lines printed over a whole run when the stream is not a terminal


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ProgressBar:
    """A ``progress`` callback for ``train``: step, loss, learning rate, speed, ETA."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        self._stream, self._live = stream, live  # None: sys.stderr as it is at each call
        self.line_open = False

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    @property
    def live(self) -> bool:
        return _is_terminal(self.stream) if self._live is None else self._live

    def __call__(self, run: Any, record: dict[str, float], seconds_per_step: float) -> None:
        total, done = run.cfg.steps, int(record["step"])
        eta = seconds_per_step * (total - done)
        text = (
            f"{done}/{total} loss {record['loss']:.3f} lr {record['lr']:.1e} "
            f"{1.0 / seconds_per_step:.1f} steps/s ETA {int(eta // 60)}:{int(eta % 60):02d}"
        )
        if self.live:
            width = 24
            filled = int(width * done / total)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}")
            self.line_open = done < total
            if not self.line_open:
                self.stream.write("\n")
        elif done == total or done % max(1, total // PLAIN_LINES) == 0:
            self.stream.write(f"step {text}\n")
        self.stream.flush()

    def close(self) -> None:
        """End an unfinished bar line."""
        if self.line_open:
            self.stream.write("\n")
            self.stream.flush()
            self.line_open = False


progress_bar = ProgressBar()  # on sys.stderr, live when that is a terminal
