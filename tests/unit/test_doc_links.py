"""Every relative link in README.md and docs/*.md resolves: the file or directory exists, and a ``#fragment``
into a Markdown page names one of its headings.

The README is the front door and docs/ holds the topic pages it points to; files move (the layout changes,
pages split), and a link that silently points nowhere is how a reader gets lost. External URLs are not
fetched: tests run without network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
#: ``[text](target)`` and ``![alt](target)``; the target may be ``<...>`` and may carry a ``"title"``.
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
#: Reference definitions: ``[label]: target``.
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@dataclass(frozen=True)
class Link:
    page: Path
    line: int
    target: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}: ({self.target})"


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """Lines outside fenced code blocks, with code spans blanked (a link inside code is not a link)."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, _CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)))
    return lines


def links(page: Path) -> list[Link]:
    found = []
    for number, line in _prose_lines(page.read_text()):
        targets = [m.group(1) for m in _INLINE.finditer(line)]
        if reference := _REFERENCE.match(line):
            targets.append(reference.group(1))
        found += [Link(page, number, t.removeprefix("<").removesuffix(">")) for t in targets]
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The fragments a page answers to: its headings' slugs (repeats numbered as GitHub does) and HTML anchors."""
    text = page.read_text()
    seen: dict[str, int] = {}
    result = set(_HTML_ANCHOR.findall(text))
    for _, line in _prose_lines(text.replace("`", "")):
        if match := _HEADING.match(line):
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken(link: Link, root: Path = REPO) -> str | None:
    """Why ``link`` does not resolve inside ``root``, or None when it does (or is not relative)."""
    if _SCHEME.match(link.target) or link.target.startswith("//"):
        return None
    path_part, _, fragment = link.target.partition("#")
    target = (link.page.parent / unquote(path_part)).resolve() if path_part else link.page
    if not target.exists():
        return "no such file or directory"
    if not target.is_relative_to(root):
        return "points outside the repository"
    if fragment and target.suffix == ".md" and unquote(fragment) not in anchors(target):
        return f"{target.relative_to(root)} has no heading with anchor #{fragment}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    problems = [f"{link}: {why}" for link in links(page) if (why := broken(link))]
    assert problems == [], "broken links (fix the target or the heading):\n" + "\n".join(problems)


def test_the_readme_points_into_docs() -> None:
    """The front door links every topic page, so a page nobody links to cannot exist unnoticed."""
    linked = {
        (REPO / link.target.partition("#")[0]).resolve()
        for link in links(REPO / "README.md")
        if not _SCHEME.match(link.target)
    }
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert unlinked == []


def test_the_checker_reports_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n")
    page.write_text(
        "# A title\n\n## Second (`code`) part\n\n[ok](#second-code-part) [gone](missing.md) [bad](#nowhere)\n"
        "[there](other.md#other) [not there](other.md#title) `[in code](missing.md)`\n\n"
        "```\n[in a fence](missing.md)\n```\n[web](https://example.org/x) [up](../outside.md)\n"
    )
    (tmp_path.parent / "outside.md").touch()
    found = {link.target: broken(link, root=tmp_path) for link in links(page)}
    assert found == {
        "#second-code-part": None,
        "missing.md": "no such file or directory",
        "#nowhere": "page.md has no heading with anchor #nowhere",
        "other.md#other": None,
        "other.md#title": "other.md has no heading with anchor #title",
        "https://example.org/x": None,
        "../outside.md": "points outside the repository",
    }


def test_slug_matches_githubs_anchors() -> None:
    assert slug("High availability (stack up --ha)") == "high-availability-stack-up---ha"
    assert slug("Backups at ~10 GB against pgBackRest") == "backups-at-10-gb-against-pgbackrest"
    assert slug("Data files and the instance config") == "data-files-and-the-instance-config"
