"""The manual (docs/, built by `mkdocs build --strict` in `make lint`) and the README that
points into it. mkdocs checks the links between pages but never sees the README, so its
links are checked here; and every page is in the nav (also a strict-mode warning, through
mkdocs.yml's `validation`, but that setting is one line anyone may drop)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.reliability import report

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


class _Loader(yaml.SafeLoader):
    """mkdocs.yml may hold `!!python/name:` and `!ENV` tags; their values do not matter here."""


_Loader.add_multi_constructor("", lambda loader, suffix, node: None)


def _nav_pages(entry: Any) -> set[str]:
    if isinstance(entry, str):
        return {entry}
    if isinstance(entry, list):
        return set().union(*map(_nav_pages, entry)) if entry else set()
    if isinstance(entry, dict):
        return set().union(*map(_nav_pages, entry.values())) if entry else set()
    return set()


def _slug(heading: str) -> str:
    """A heading's anchor, as GitHub and mkdocs's toc both make it for plain headings."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return re.sub(r"-{2,}", "-", text.replace(" ", "-"))


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_every_page_is_in_the_nav() -> None:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)
    listed = _nav_pages(config["nav"])
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages - listed == set(), "pages missing from mkdocs.yml's nav"


def test_the_readmes_relative_links_resolve() -> None:
    targets = LINK.findall((ROOT / "README.md").read_text())
    relative = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert any(t.startswith("docs/") for t in relative)  # the parser found the links
    for target in relative:
        path, _, anchor = target.partition("#")
        file = ROOT / path if path else ROOT / "README.md"
        assert file.exists(), f"README.md links to {target}: no such file"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"README.md links to {target}: no such heading"


def test_the_reliability_report_goes_into_its_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = report.PAGE.read_text()
    assert text.count(report.START) == 1 and text.count(report.END) == 1
    page = tmp_path / "reliability.md"
    page.write_text(text)
    monkeypatch.setattr(report, "PAGE", page)
    monkeypatch.setattr(report, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(report, "FIGURES", tmp_path / "results" / "figures.jsonl")
    report.reset()
    report.record("Faults", "a scenario", "it held", tasks=3)
    report.write("a test machine", page=True)
    before, after = text.split(report.START)[0], text.split(report.END)[1]
    assert page.read_text() == (
        f"{before}{report.START}\n{report.render('a test machine')}{report.END}{after}"
    )
