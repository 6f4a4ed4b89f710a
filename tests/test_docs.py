"""The documentation cannot drift from the code: the site builds with every link and page in place, the
README's links resolve, the commands its shell blocks show still run on shipped data, and the reference
pages list every metric and every suite key.

A shell block's line is run when it starts with ``harness validate``, ``harness list``, ``harness schema``,
``harness compare`` or ``harness run ... --dry-run``; it must exit 0 unless a comment on the line before the
block says otherwise: ``<!-- docs-test: skip (reason) -->``, ``<!-- docs-test: exit N -->`` or
``<!-- docs-test: needs-corpora -->`` (skipped where the shared corpora are missing)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
README = REPO / "README.md"
PAGES = sorted(DOCS.glob("*.md"))  # docs/_incoming/ holds fragments, not pages
CORPORA = Path(os.environ.get("HARNESS_CORPORA", REPO.parent / "shared" / "corpora"))

FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"<!--\s*docs-test:\s*(skip|exit|needs-corpora)\s*(.*?)\s*-->")
RUNNABLE = re.compile(r"^harness (validate|list|schema|compare)\b|^harness run\b.*\s--dry-run\b")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Example:
    """One command line of a shell block, and what its page says about running it."""

    page: Path
    line: int
    argv: tuple[str, ...]
    marker: str | None  # skip, exit, needs-corpora
    detail: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}: {' '.join(self.argv)}"


def _shell_lines(path: Path):
    """(line number, command, marker, detail) of every line of every sh/bash/console block; continuation
    lines joined, comments and prompts dropped, `.venv/bin/harness` read as `harness`."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        before = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = MARKER.search(before)
        body_start, i = i + 1, i + 1
        while i < len(lines) and not FENCE.match(lines[i]):
            i += 1
        if fence.group(1) in ("sh", "bash", "console", "shell"):
            number, pending = None, ""
            for offset, text in enumerate(lines[body_start:i]):
                text = text.removeprefix("$ ")
                number = number or body_start + offset + 1
                if text.rstrip().endswith("\\"):
                    pending += text.rstrip()[:-1] + " "
                    continue
                command = (pending + text).strip()
                if command:
                    yield number, command, marker.group(1) if marker else None, marker.group(2) if marker else ""
                number, pending = None, ""
        i += 1


def examples() -> list[Example]:
    found = []
    for page in [README, *PAGES]:
        for number, command, marker, detail in _shell_lines(page):
            argv = shlex.split(command, comments=True)
            if argv and argv[0].endswith("/harness"):
                argv[0] = "harness"
            if RUNNABLE.match(" ".join(argv)):
                found.append(Example(page, number, tuple(argv), marker, detail))
    return found


EXAMPLES = examples()


def test_the_docs_show_every_kind_of_checked_command():
    """Guards the parser: if it stopped finding commands, the test below would pass on nothing."""
    kinds = {e.argv[1] for e in EXAMPLES if e.marker != "skip"}
    assert kinds >= {"validate", "run", "list", "schema", "compare"}


def test_the_readme_commands_are_what_ci_runs():
    """The README's first two commands (set up and run the quickstart; the tests) are .ci/run's, verbatim."""
    readme = [command for _, command, _, _ in _shell_lines(README)][:2]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert len(readme) == 2 and "suites/quickstart.yaml" in readme[0] and readme[1].endswith("pytest")
    for command in readme:
        assert command in ci, f"README's {command!r} is not a line of .ci/run"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_documented_command_runs(example, monkeypatch, capsys):
    """Each documented command, run as the page shows it, from the repository root, exits as documented."""
    from harness.cli import main

    if example.marker == "skip":
        pytest.skip(example.detail.strip("() ") or "marked skip")
    if example.marker == "needs-corpora" and not (CORPORA / "wikitext-2-raw" / "wiki.test.raw").is_file():
        pytest.skip(f"needs the shared corpora at {CORPORA} (set HARNESS_CORPORA)")
    expected = int(example.detail) if example.marker == "exit" else 0
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HARNESS_CORPORA", str(CORPORA))
    monkeypatch.setenv("COLUMNS", "120")
    code = main(list(example.argv[1:]))
    err = capsys.readouterr().err
    if code == 2 and "which is not installed" in err:
        pytest.skip(f"an extra is not installed here: {err.strip().splitlines()[-1]}")
    assert code == expected, f"{example.name}: exit {code}, expected {expected}\n{err}"


def _slug(heading: str) -> str:
    from markdown.extensions.toc import slugify

    return slugify(heading, "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m.group(1).strip()) for m in re.finditer(r"^#{1,6} (.+)$", page.read_text(), flags=re.M)}


def test_every_relative_link_of_the_readme_resolves():
    links = [target for target in LINK.findall(README.read_text()) if not re.match(r"[a-z]+:", target)]
    assert any(target.startswith("docs/") for target in links)
    for target in links:
        path, _, anchor = target.partition("#")
        file = (README.parent / path).resolve() if path else README
        assert file.is_file(), f"README.md links to {target}: no such file"
        if anchor and file.suffix == ".md" and importlib.util.find_spec("markdown"):
            assert anchor in _anchors(file), f"README.md links to {target}: no such heading"


def test_the_site_builds_strictly(tmp_path):
    """mkdocs --strict fails on a link to a missing page or anchor, a page outside the nav, a missing
    snippet or an API object that does not exist."""
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    # not --quiet: it hides the warnings that --strict counts, and the build passes with them
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in PAGES:
        name = "index.html" if page.stem == "index" else f"{page.stem}/index.html"
        assert (tmp_path / "site" / name).is_file(), f"{page.name} was not built"
    assert not (tmp_path / "site" / "_incoming").exists()


def test_the_metrics_page_lists_every_registered_metric():
    from harness.core.metrics import METRICS

    table = (DOCS / "metrics.md").read_text().split("## Every metric", 1)[1]
    listed = set(re.findall(r"^\| `([a-z0-9_]+)` \|", table, flags=re.M))
    assert listed == set(METRICS), (f"not on docs/metrics.md: {sorted(set(METRICS) - listed)}; "
                                    f"not registered: {sorted(listed - set(METRICS))}")


def _keys(schema) -> set[str]:
    if isinstance(schema, dict):
        own = set(schema.get("properties", {}))
        return own.union(*(_keys(v) for v in schema.values()))
    if isinstance(schema, list):
        return set().union(*(_keys(v) for v in schema))
    return set()


def test_the_suites_page_names_every_key_of_the_schema(capsys):
    from harness.cli import main

    assert main(["schema"]) == 0
    keys = _keys(json.loads(capsys.readouterr().out))
    page = (DOCS / "suites.md").read_text()
    assert {"n_ctx", "quantization", "strategies", "exclusive"} <= keys
    missing = sorted(k for k in keys if f"`{k}`" not in page)
    assert not missing, f"suite keys docs/suites.md does not name: {missing}"
