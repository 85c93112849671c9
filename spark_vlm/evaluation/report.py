"""The one report format of every evaluation: a JSON file with all the numbers, the same path with .md holding a
markdown table of the headline numbers, and that table printed.

Reports hold no timings, so that a repeated run writes byte-identical files.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..data.images import BadSample, SkipCounter


@dataclass
class Report:
    """What an evaluation protocol returns. `rows` is the markdown table (columns = the first row's keys);
    without rows the table lists the result's scalars as `| metric | value |`."""

    title: str
    result: dict
    rows: list[dict] | None = None


def read_json(path, what: str):
    """A JSON file's content; a missing or malformed file raises ValueError naming it and `what` it is."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read {what} file {path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} file {path} is not valid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} file {path} is not UTF-8 text: {e.reason} at byte {e.start}") from e


def check_batch_size(batch_size: int) -> None:
    """Every evaluation batches with range(0, n, batch_size): below 1 it would yield nothing (an empty result, or an
    IndexError further on) instead of saying what is wrong."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")


def skip_summary(counter: SkipCounter | None) -> dict:
    """{"total": n, "by_reason": {...}} of the images skipped as unreadable (zero when nothing could go wrong)."""
    if counter is None:
        return {"total": 0, "by_reason": {}}
    return {"total": counter.total, "by_reason": dict(sorted(counter.counts.items()))}


def _format(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def markdown_table(result: dict, rows: list[dict] | None = None) -> str:
    """`rows` as a markdown table, or the result's scalars as `| metric | value |` rows (nested dicts of scalars
    flattened to "outer.inner"; lists are left out)."""
    if rows is None:
        rows = []

        def walk(prefix, d):
            for k, v in d.items():
                name = f"{prefix}{k}"
                if isinstance(v, dict):
                    walk(name + ".", v)
                elif not isinstance(v, (list, tuple)):
                    rows.append({"metric": name, "value": v})
        walk("", result)
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_report(report: Report, out_json) -> str:
    """Write the result to out_json and the table to the same path with .md; print and return the table."""
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report.result, indent=2) + "\n")
    table = f"## {report.title}\n\n{markdown_table(report.result, report.rows)}\n"
    out_json.with_suffix(".md").write_text(table)
    print(table)
    return table


# Every character str.splitlines() breaks a line at, written as its escape instead.
_LINE_BREAKS = {ord(c): c.encode("unicode_escape").decode() for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def error_line(e: BaseException) -> str:
    """`error: <message>` on one line: a file name with a line break in it must not split the message."""
    return f"error: {str(e).translate(_LINE_BREAKS)}\n"


def report_or_exit(parser, make_report, out_json) -> dict:
    """The tail of every eval/*.py command line: run the protocol, write its report and return the result; a bad
    input (a missing or malformed file, an unusable image set, ...) ends as one `error:` line and exit code 2."""
    try:
        report = make_report()
    except (OSError, ValueError, KeyError, BadSample) as e:
        parser.exit(2, error_line(e))
    write_report(report, out_json)
    return report.result
