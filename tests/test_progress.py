"""Progress output: a live bar on a terminal, plain lines in a log, and a bar line always ended."""

from __future__ import annotations

import io
from types import SimpleNamespace

from minidetr.train.progress import ProgressBar


def _run(steps: int) -> SimpleNamespace:
    return SimpleNamespace(cfg=SimpleNamespace(steps=steps))


def _feed(bar: ProgressBar, steps: int, upto: int) -> None:
    for step in range(1, upto + 1):
        bar(_run(steps), {"step": step, "loss": 1.0 / step, "lr": 1e-3}, 0.1)


def test_a_log_gets_about_ten_plain_lines_and_no_carriage_returns():
    stream = io.StringIO()
    _feed(ProgressBar(stream), 200, 200)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10 and lines[0].startswith("step 20/200 loss")
    assert lines[-1].startswith("step 200/200")


def test_a_terminal_gets_one_live_line_and_close_ends_it_before_an_error():
    stream = io.StringIO()
    bar = ProgressBar(stream, live=True)
    _feed(bar, 10, 3)
    assert stream.getvalue().count("\r") == 3 and not stream.getvalue().endswith("\n")
    bar.close()
    assert stream.getvalue().endswith("\n")
    bar.close()  # nothing more to end
    assert not stream.getvalue().endswith("\n\n")


def test_the_live_bar_ends_its_line_at_the_last_step():
    stream = io.StringIO()
    bar = ProgressBar(stream, live=True)
    _feed(bar, 4, 4)
    assert stream.getvalue().endswith("\n") and not bar.line_open


def test_a_stream_without_isatty_counts_as_a_log():
    class Bare:
        def __init__(self):
            self.parts = []

        def write(self, text):
            self.parts.append(text)

        def flush(self):
            pass

    stream = Bare()
    _feed(ProgressBar(stream), 10, 10)
    assert all("\r" not in p for p in stream.parts) and len(stream.parts) == 10
