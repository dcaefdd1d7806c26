"""gcluster.logstats: the operator's lines, and JSON log lines, from plain values."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from gcluster.logstats import (
    MAX_FIELD,
    MAX_MESSAGE,
    JsonFormatter,
    Sample,
    configure_logging,
    format_progress,
    format_stats,
    id_ranges,
)
from gcluster.stages import Stage

C, R, I = Stage.CONNECTED, Stage.RESUMING, Stage.IDENTIFYING  # noqa: E741


def test_id_ranges_joins_runs_and_says_how_many_it_left_out() -> None:
    assert id_ranges([5, 0, 1, 2]) == "0-2, 5"
    assert id_ranges([3]) == "3"
    assert id_ranges([]) == ""
    assert id_ranges(range(0, 40, 2), limit=3) == "0, 2, 4, and 17 more"


def test_progress_counts_ready_shards_and_names_the_others_by_stage() -> None:
    sample = Sample(at=12.5, stages={0: C, 1: C, 2: R, 3: I, 4: I, 5: C, 6: C, 7: C})
    assert format_progress(sample, started=10.0) == (
        "5/8 shards ready after 2.5 s; identifying: 3-4; resuming: 2"
    )
    done = Sample(at=1.0, stages={0: C, 1: C})
    assert format_progress(done) == "2/2 shards ready"


def test_stats_line_gives_rates_and_changes_since_the_last_one() -> None:
    before = Sample(at=100.0, stages={0: C, 1: C}, events=1_000, reconnects=3, backlog=7)
    after = Sample(at=160.0, stages={0: C, 1: R}, events=61_000, reconnects=4, backlog=12)
    assert format_stats(before, after) == (
        "stats: 1000 events/s; shards: 1 connected, 1 resuming (resuming: 1); "
        "backlog 12; 1 reconnect"
    )


def test_stats_line_of_a_quiet_cluster() -> None:
    sample = Sample(at=5.0, stages={0: C}, events=10)
    assert format_stats(sample, sample) == (
        "stats: 0 events/s; shards: 1 connected; backlog 0; 0 reconnects"
    )


def test_stats_never_go_negative_when_counters_restart() -> None:
    # A shard removed takes its counters with it.
    before = Sample(at=0.0, stages={0: C, 1: C}, events=500, reconnects=9)
    after = Sample(at=10.0, stages={0: C}, events=100, reconnects=2)
    assert format_stats(before, after).startswith("stats: 0 events/s;")
    assert format_stats(before, after).endswith("0 reconnects")


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("gcluster.shard", logging.INFO, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_hold_the_message_and_the_structured_fields() -> None:
    line = JsonFormatter().format(
        record("shard %d: disconnected", 3, shard=3, code=4000, cause="gateway_close", ok=True)
    )
    data = json.loads(line)
    assert data["level"] == "INFO"
    assert data["logger"] == "gcluster.shard"
    assert data["message"] == "shard 3: disconnected"
    assert (data["shard"], data["code"], data["cause"], data["ok"]) == (
        3,
        4000,
        "gateway_close",
        True,
    )
    assert data["ts"].endswith("+00:00")
    assert "args" not in data and "msg" not in data and "exc" not in data


def test_a_hostile_message_stays_one_ascii_line() -> None:
    hostile = "a\nb\r\nc\u2028d\x00e" + "\udcff" + "é"  # a lone surrogate, as surrogateescape gives
    line = JsonFormatter().format(record("%s", hostile, reason=hostile, raw=b"\xff\xfe\n"))
    assert "\n" not in line and "\r" not in line
    line.encode("ascii")  # any stream can take it
    data = json.loads(line)
    assert data["message"].startswith("a\nb\r\nc\u2028d\x00e")
    assert "\\udcff" in data["message"]  # shown escaped, not as a lone surrogate
    assert data["raw"] == "\\xff\\xfe\n"


def test_huge_messages_and_fields_are_cut_and_say_so() -> None:
    big = "x" * (MAX_MESSAGE * 10)
    data = json.loads(JsonFormatter().format(record("%s", big, note="y" * (MAX_FIELD + 5))))
    assert len(data["message"]) < MAX_MESSAGE + 100
    assert data["message"].endswith(f"({len(big) - MAX_MESSAGE} more characters)")
    assert data["note"].endswith("(5 more characters)")


def test_odd_field_values_become_strings_or_json_numbers() -> None:
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    data = json.loads(
        JsonFormatter().format(record("m", nan=float("nan"), ratio=0.5, thing=Thing(), none=None))
    )
    assert data["nan"] == "nan"
    assert data["ratio"] == 0.5
    assert data["thing"] == "a thing"
    assert data["none"] is None


def test_a_traceback_is_one_string_field() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = logging.LogRecord(
            "gcluster.shard", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    data = json.loads(line)
    assert data["exc"].startswith("Traceback (most recent call last):")
    assert "ValueError: boom\nsecond line" in data["exc"]


def test_a_record_whose_arguments_do_not_fit_is_reported_by_logging() -> None:
    # getMessage raises; logging's handler reports it rather than the formatter hiding it.
    with pytest.raises(TypeError):
        JsonFormatter().format(record("%d", "not a number"))


def test_configure_logging_writes_json_lines_at_the_level_asked() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("warning", "json", stream)
        logging.getLogger("gcluster.test").info("not shown")
        logging.getLogger("gcluster.test").warning("shown", extra={"shard": 1})
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["shown"]
    assert json.loads(lines[0])["shard"] == 1


def test_configure_logging_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("info", "xml")
