"""The reliability suite's figures: each test, once its assertions have passed, records
what it survived and measured; the session writes them as Markdown (results/<mode>.md)
and `make test-reliability` puts that table in the manual's reliability page
(docs/reliability.md, between its START and END markers).

Only passing tests record, so every figure in the report was checked by an assertion.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PAGE = HERE.parent.parent / "docs" / "reliability.md"
FULL = os.environ.get("RELIABILITY") == "full"
MODE = "full" if FULL else "quick"
RESULTS = HERE / "results"
FIGURES = RESULTS / f"{MODE}.jsonl"
START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"
SECTIONS = ("Faults", "Load", "Bad input and security")


def scale(quick: int, full: int) -> int:
    """How big a scenario is: `make test` runs the quick size, `make test-reliability` both."""
    return full if FULL else quick


def reset() -> None:
    RESULTS.mkdir(exist_ok=True)
    FIGURES.write_text("")


def has_rows() -> bool:
    return FIGURES.exists() and FIGURES.stat().st_size > 0


def record(section: str, scenario: str, outcome: str, **figures: Any) -> None:
    """One row of the report: `outcome` is what the test asserted, in words."""
    assert section in SECTIONS, section
    row = {"section": section, "scenario": scenario, "outcome": outcome, "figures": figures}
    with FIGURES.open("a") as out:
        out.write(json.dumps(row) + "\n")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(machine: str) -> str:
    rows = [json.loads(line) for line in FIGURES.read_text().splitlines() if line.strip()]
    lines = [f"*Produced by `make test-reliability` ({MODE} sizes) on {machine}.*", ""]
    for section in SECTIONS:
        mine = [r for r in rows if r["section"] == section]
        if not mine:
            continue
        lines += [f"**{section}**", "", "| Scenario | Outcome (asserted) | Figures |",
                  "|---|---|---|"]
        for row in mine:
            figures = ", ".join(f"{k.replace('_', ' ')} {_cell(v)}"
                                for k, v in row["figures"].items())
            lines.append(f"| {row['scenario']} | {row['outcome']} | {figures} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write(machine: str, page: bool) -> Path:
    markdown = render(machine)
    out = RESULTS / f"{MODE}.md"
    out.write_text(markdown)
    if page:
        text = PAGE.read_text()
        pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
        if not pattern.search(text):
            raise RuntimeError(f"{PAGE} has no {START} ... {END} section")
        PAGE.write_text(pattern.sub(lambda _: f"{START}\n{markdown}{END}", text))
    return out
