"""Writes docs/compliance.md from a run of the compliance check (tests/e2e/test_compliance.py).

    python -m tests.compliance_table [extra pytest arguments]

The check runs in this process through pytest's API. A plugin picks up, per row, the outcome
the test recorded (its ``compliance`` user property); a row that broke before recording one
(a server that would not start, say) is still listed, as not working, with pytest's reason.
The table is written whenever the rows ran, failing ones included, and the exit status is
pytest's, so that a failing row also fails the command.
"""

from __future__ import annotations

import datetime as dt
import html
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "tests" / "e2e" / "test_compliance.py"
OUTPUT = ROOT / "docs" / "compliance.md"
COMMAND = "python -m tests.compliance_table"
NOT_YET = "not yet"


@dataclass
class Row:
    requirement: str
    xep: str
    category: str
    level: str
    advertised: str
    works: str
    note: str


class Collector:
    """A pytest plugin that keeps each compliance row's recorded outcome and pytest's verdict."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.recorded: dict[str, dict[str, Any]] = {}
        self.problems: dict[str, str] = {}
        self.skipped: set[str] = set()

    @staticmethod
    def _row_id(nodeid: str) -> str | None:
        test, _, param = nodeid.partition("[")
        if not test.endswith("::test_requirement") or not param.endswith("]"):
            return None
        return param[:-1]

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            row = self._row_id(item.nodeid)
            if row is not None:
                self.ids.add(row)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        row = self._row_id(report.nodeid)
        if row is None:
            return
        for name, value in report.user_properties:
            if name == "compliance" and isinstance(value, dict):
                self.recorded[row] = value
        if report.skipped:
            self.skipped.add(row)
        elif report.failed and row not in self.problems:
            lines = str(report.longreprtext or "").strip().splitlines()
            reason = lines[-1] if lines else "failed"
            self.problems[row] = f"{report.when}: {reason[:300]}"


def yes_no(value: object) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "**no**"
    return "not checked"


def check_module() -> ModuleType:
    """The compliance test module, as pytest imported it. Imported only after the run:
    pytest can rewrite the asserts of a module it imports first, not of one already loaded,
    and the rewritten asserts are what make a failing row's note say what went wrong."""
    return importlib.import_module("tests.e2e.test_compliance")


def rows_from(collector: Collector, compliance: ModuleType) -> list[Row]:
    rows = []
    for req in compliance.REQUIREMENTS:
        row_id = compliance.IDS[req]
        base = (req.requirement, req.xep, req.category, req.level)
        if req.not_yet is not None:
            rows.append(Row(*base, NOT_YET, NOT_YET, req.not_yet))
            continue
        got = collector.recorded.get(row_id)
        problem = collector.problems.get(row_id)
        if got is None:
            if row_id not in collector.ids or row_id in collector.skipped:
                rows.append(Row(*base, "not run", "not run", "left out of this run"))
            else:
                rows.append(Row(*base, "not checked", "**no**", f"FAILED before the exchange: {problem}"))
            continue
        note = str(got.get("note", ""))
        works = got.get("works")
        # A row can record success and still fail afterwards (a stray error at teardown).
        if problem is not None and works and got.get("advertised"):
            works = False
            note += f" FAILED after the exchange: {problem}"
        rows.append(Row(*base, yes_no(got.get("advertised")), yes_no(works), note))
    return rows


def cell(text: str) -> str:
    parts = " ".join(text.split()).split("`")
    # Outside code spans an XML snippet (from a failure message, say) would be taken for
    # HTML and vanish from the page.
    for i in range(0, len(parts), 2):
        parts[i] = html.escape(parts[i], quote=False)
    return "`".join(parts).replace("|", "\\|")


def table(rows: Sequence[Row]) -> list[str]:
    out = ["| Requirement | XEP | Advertised | Works | Note |", "|---|---|---|---|---|"]
    out += [f"| {cell(r.requirement)} | {cell(r.xep)} | {cell(r.advertised)} | {cell(r.works)} | {cell(r.note)} |"
            for r in rows]
    return out


INTRO = """\
Parley measured against the XMPP Compliance Suites 2023
([XEP-0479](https://xmpp.org/extensions/xep-0479.html)) at the **Advanced Server** level, for
the Core, IM and Mobile categories, and the one server row of A/V Calling (STUN/TURN
discovery). Rows the suite marks as client-only are left out.

- **Advertised**: the feature is announced where its specification says: in the stream
  features, or in the service discovery (disco#info) of the server or of the user's account.
- **Works**: a real client (slixmpp, or a raw XMPP stream where a library would hide the
  detail) signs in and completes the exchange the Note describes; an advertisement alone
  never counts.
- The features are provided by the server's own modules: no external component is
  involved (the XEP-0114 row connects one, to show that components can be added).
"""


def render(rows: Sequence[Row], compliance: ModuleType, extra_args: Sequence[str]) -> str:
    sections = (
        ("Required at the Server level (and so at Advanced Server)", (compliance.SERVER_LEVEL,)),
        ("Required at the Advanced Server level", (compliance.ADVANCED,)),
        ("Also provided (not required by the suite)", (compliance.OF_NOTE, compliance.BEYOND)),
    )
    checked = [r for r in rows if r.works not in (NOT_YET, "not run")]
    passing = [r for r in checked if r.works == "yes" and r.advertised == "yes"]
    command = " ".join([COMMAND, *extra_args])
    lines = [
        "# XMPP compliance",
        "",
        f"Generated on {dt.date.today().isoformat()} by `{command}`, which runs "
        "`tests/e2e/test_compliance.py`; regenerate it rather than editing it.",
        "",
        INTRO,
        f"Result: {len(passing)} of {len(checked)} checked rows advertised and working; "
        f"{len(checked) - len(passing)} failing"
        + (f"; {waiting} not built yet." if (waiting := sum(r.works == NOT_YET for r in rows)) else "."),
    ]
    failing = [r for r in checked if r not in passing]
    if failing:
        lines += ["", "Failing: " + ", ".join(f"{r.xep} {r.requirement} ({r.category})" for r in failing) + "."]
    for category in compliance.CATEGORIES:
        mine = [r for r in rows if r.category == category]
        if not mine:
            continue
        lines += ["", f"## {category}"]
        for title, levels in sections:
            part = [r for r in mine if r.level in levels]
            if part:
                lines += ["", f"### {title}", "", *table(part)]
    lines += ["", "## Not covered here", "",
              "The Web category (RFC 7395 WebSocket, XEP-0206 BOSH) is not part of this check.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    collector = Collector()
    code = pytest.main([str(CHECK), "-q", "-p", "no:cacheprovider", *extra], plugins=[collector])
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        print(f"the compliance check did not run to the end (pytest exit {int(code)}); "
              f"{OUTPUT} left as it was", file=sys.stderr)
        return int(code)
    compliance = check_module()
    OUTPUT.write_text(render(rows_from(collector, compliance), compliance, extra), encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
