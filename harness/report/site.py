"""``harness dashboard DIR... --out site/``: a static site of every metric over the nights.

Pages: an overview (a row per cell, a sparkline per headline metric, the last value and its change since
the previous night and since the last change point), a page per metric (one interactive chart per task:
a line per backend, the CI as a band, change points and machine or library changes marked, a click opens
that night's report), the quantization and decoding views of the latest runs, the runs with their machine
and library versions, and each run's report. Runs of several suites, and the per-backend runs of one
nightly (each job its own run directory), mix: a cell's series is the runs it ran in.

Nothing is fetched: the pages load ``assets/plotly.min.js`` (plotly's own copy, once for the whole site),
``assets/site.js`` and ``assets/site.css`` by relative paths, so the site opens from ``file://``, a CI
artifact or GitHub Pages alike.

This module writes the site (:mod:`harness.report.site_data` holds its series, :mod:`harness.report.site_pages`
its pages)."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from harness.analysis.gates import Gates
from harness.core.errors import UserError
from harness.report import charts
from harness.report.site_data import Site, collect
from harness.report.site_pages import asset, render

#: the file that tells a folder is a site this command wrote (so --out may replace it)
MARK = ".harness-dashboard"


def plotly_js() -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise UserError("the dashboard needs plotly: pip install -e '.[dashboard]'") from None
    return get_plotlyjs()


def _code_key() -> str:
    """The code a run's page comes from: an earlier page is kept only while it is unchanged."""
    from harness.core import filenames, markdown
    from harness.report import console, site_data, site_pages, views
    from harness.report import render as report_render

    digest = hashlib.sha256()
    for module in (views, report_render, console, charts, markdown, filenames, site_data, site_pages,
                   sys.modules[__name__]):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(asset("panels.css").encode())
    return digest.hexdigest()


def _page_keys(site: Site) -> dict[str, str]:
    """Run page -> a hash of what it is made from (the run's tables and the code)."""
    code, keys = _code_key(), {}
    for night in site.nights:
        digest = hashlib.sha256(code.encode())
        for name in ("run.json", "results.parquet"):
            digest.update((night.run.path / name).read_bytes())
        keys[night.page] = digest.hexdigest()
    return keys


def _kept_pages(out: Path, keys: dict[str, str]) -> dict[str, str]:
    """The run pages of the site already in ``out`` whose run and code are unchanged (a night's rebuild
    renders one new report instead of thirty)."""
    try:
        before = json.loads((out / MARK).read_text()).get("run_pages", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {page: (out / page).read_text(encoding="utf-8") for page, key in keys.items()
            if before.get(page) == key and (out / page).is_file()}


def _new_folder_beside(out: Path) -> Path:
    """An empty folder beside ``out`` with the mode a new folder gets (0777 less the umask: a web server may
    read the site), not ``mkdtemp``'s 0700."""
    while True:
        tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}")
        try:
            tmp.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return tmp


def write_site(paths: list[Path], out: Path, make_gates: Callable[[dict], Gates]) -> Site:
    """Build the site in a folder beside ``out`` and swap it in, so a reader never sees half a site; an
    existing ``out`` is replaced only if it is such a site (or empty), and its unchanged run pages kept."""
    out = Path(out)
    if out.exists() and not (out / MARK).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not a site of harness dashboard (no {MARK}); choose another --out")
    site = collect(paths, make_gates)
    keys = _page_keys(site)
    kept = _kept_pages(out, keys)
    js = plotly_js()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_folder_beside(out)
    try:
        (tmp / "assets").mkdir()
        (tmp / "assets" / "plotly.min.js").write_text(js, encoding="utf-8")
        (tmp / "assets" / "site.js").write_text(asset("site.js"), encoding="utf-8")
        (tmp / "assets" / "site.css").write_text(asset("panels.css") + asset("site.css"), encoding="utf-8")
        for rel, text in render(site, kept).items():
            path = tmp / rel
            if not path.resolve().is_relative_to(tmp.resolve()):  # every page's name is a stem: never
                raise RuntimeError(f"page {rel!r} would be written outside the site")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        (tmp / MARK).write_text(json.dumps({"note": "written by harness dashboard; replaced by its next run",
                                            "run_pages": keys}, indent=1))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return site
