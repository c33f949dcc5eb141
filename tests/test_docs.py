"""The README and docs/ hold together: every relative link and anchor resolves.

For README.md and every Markdown file under docs/, each link and image whose
target is relative (not ``http(s):`` or ``mailto:``) must name a file that
exists, relative to the Markdown file's directory, and a ``#fragment`` must
be the GitHub slug of a heading in the target (or in the same file for a bare
``#fragment``). Links inside fenced code blocks and inline code are not links.
A second test keeps the README's first screen a newcomer's start.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MARKDOWN_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]

# The pages the README's table of contents must point to, within its first screen.
CONTENTS_PAGES = (
    "docs/api.md",
    "docs/authentication.md",
    "docs/configuration.md",
    "docs/operations.md",
    "docs/scaling.md",
    "docs/benchmarks.md",
    "docs/billing-page.md",
    "docs/development.md",
    "docs/architecture.md",
)
FIRST_SCREEN_LINES = 60

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")
# [text](target) or ![alt](target), the text possibly across lines, with an optional "title".
_INLINE_LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\(\s*(?P<target><[^>]*>|[^\s)]*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
# [label]: target
_REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(?P<target><[^>]*>|\S+)", re.MULTILINE)
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(?P<text>.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_EXTERNAL = re.compile(r"^(https?:|mailto:)", re.IGNORECASE)


def prose_lines(text: str) -> list[str]:
    """The file's lines with fenced code blocks blanked out (lengths and line numbers kept)."""
    lines, fence = [], None
    for line in text.split("\n"):
        opening = _FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)
            lines.append(" " * len(line))
        elif fence is not None:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence) \
                    and not line.strip().strip(fence[0]):
                fence = None
            lines.append(" " * len(line))
        else:
            lines.append(line)
    return lines


def links(text: str) -> list[tuple[int, str, str]]:
    """(line number, the link as written, its target) for every link and image outside code."""
    # Code is masked with characters of the same length, so offsets into the mask are offsets into the text.
    prose = "\n".join(_CODE_SPAN.sub(lambda m: "x" * len(m.group(0)), line) for line in prose_lines(text))
    found = []
    for pattern in (_INLINE_LINK, _REFERENCE_DEFINITION):
        for match in pattern.finditer(prose):
            line_number = prose.count("\n", 0, match.start()) + 1
            written = " ".join(text[match.start():match.end()].split())
            found.append((line_number, written, match.group("target").strip("<>")))
    return sorted(found)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation gone (but hyphens), spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts as its text
    text = re.sub(r"<[^>]+>", "", text)  # so does inline HTML
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def heading_anchors(text: str) -> set[str]:
    """Every heading's slug, duplicates numbered -1, -2, ... as GitHub numbers them."""
    lines = prose_lines(text)
    headings = []
    for index, line in enumerate(lines):
        atx = _ATX_HEADING.match(line)
        if atx:
            headings.append(atx.group("text") or "")
        elif (line.strip() and index + 1 < len(lines) and _SETEXT_UNDERLINE.match(lines[index + 1])
              and not re.match(r"^ {0,3}([-*+]|\d+[.)])\s|^\s*\|", line)
              and not _SETEXT_UNDERLINE.match(line)):
            headings.append(line)
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in headings:
        slug = github_slug(heading)
        if slug in seen:
            seen[slug] += 1
            slug = f"{slug}-{seen[slug]}"
        else:
            seen[slug] = 0
        anchors.add(slug)
    return anchors


def broken_links(markdown: Path) -> list[str]:
    text = markdown.read_text(encoding="utf-8")
    problems = []
    for line_number, written, target in links(text):
        if not target or _EXTERNAL.match(target):
            continue
        where = f"{markdown.relative_to(REPO_ROOT)}:{line_number}: {written}"
        path_part, _, fragment = target.partition("#")
        if path_part:
            path = unquote(path_part)
            resolved = (REPO_ROOT / path.lstrip("/")) if path.startswith("/") else (markdown.parent / path)
            if not resolved.exists():
                problems.append(f"{where}: no such file {os.path.relpath(resolved, REPO_ROOT)}")
                continue
        else:
            resolved = markdown
        if fragment:
            anchors = heading_anchors(resolved.read_text(encoding="utf-8")) if resolved.is_file() else set()
            if unquote(fragment) not in anchors:
                problems.append(f"{where}: {resolved.name} has no heading whose anchor is #{fragment}")
    return problems


@pytest.mark.parametrize(
    "markdown", MARKDOWN_FILES, ids=[str(path.relative_to(REPO_ROOT)) for path in MARKDOWN_FILES]
)
def test_every_relative_link_and_anchor_resolves_in(markdown: Path) -> None:
    problems = broken_links(markdown)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_readme_first_screen_has_the_two_commands_and_links_every_docs_page() -> None:
    first_screen = "\n".join((REPO_ROOT / "README.md").read_text(encoding="utf-8").split("\n")[:FIRST_SCREEN_LINES])
    assert "make run" in first_screen
    assert "make test" in first_screen
    linked = {target.partition("#")[0] for _, _, target in links(first_screen)}
    missing = [page for page in CONTENTS_PAGES if page not in linked]
    assert not missing, f"the README's first {FIRST_SCREEN_LINES} lines link none of: {', '.join(missing)}"


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Behind PgBouncer", "behind-pgbouncer"),
        ("Signing in: `getAccessToken()`", "signing-in-getaccesstoken"),
        ("Scaling: PgBouncer and replicas", "scaling-pgbouncer-and-replicas"),
        ("1b. Holds expire", "1b-holds-expire"),
        ("Putting it in the product's Next.js app", "putting-it-in-the-products-nextjs-app"),
        ("snake_case and A -- B", "snake_case-and-a----b"),
    ],
)
def test_a_heading_gets_the_anchor_github_gives_it(heading: str, anchor: str) -> None:
    assert github_slug(heading) == anchor


def test_repeated_headings_are_numbered_and_code_is_not_a_heading_or_a_link() -> None:
    text = "# Running it\n\n```sh\n# not a heading [no](missing.md)\n```\n\n## Running it\n\nSee `[no](gone.md)`.\n"
    assert heading_anchors(text) == {"running-it", "running-it-1"}
    assert links(text) == []
