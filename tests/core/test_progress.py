"""Progress off a terminal: plain lines with done/total, rate and ETA, ending in "done"."""

from __future__ import annotations

import io

from loyaltylens_core.util.progress import _duration, _lines


def test_plain_lines_carry_counts_rate_and_eta():
    out = io.StringIO()
    with _lines("Embedding offers", 4, out, interval=0) as advance:
        for _ in range(4):
            advance(1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("Embedding offers: 1/4 (25%), ") and "ETA" in lines[0]
    assert lines[-1].startswith("Embedding offers: 4/4 (100%)") and lines[-1].endswith(" done")
    assert "ETA" not in lines[-1]


def test_lines_are_throttled_to_the_interval():
    out = io.StringIO()
    with _lines("Indexing", None, out, interval=3600) as advance:
        for _ in range(1000):
            advance(1)
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]  # only the final line
    assert out.getvalue().startswith("Indexing: 1,000, ")


def test_durations_read_naturally():
    assert [_duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]
