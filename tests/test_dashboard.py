"""harness dashboard: the site is complete and self-contained, and its figures are the runs' (checked against
the result tables directly); tests/test_dashboard_browser.py opens it in a real browser."""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from runs import (
    ESCAPE,
    SCRIPT_XSS,
    VARIANTS,
    XSS,
    dashboard_nights,
    hostile_nights,
    hostile_site,
    perplexity_cell,
    write_run,
)

from harness.cli import main
from harness.core.format import fmt_value

pytestmark = pytest.mark.dashboard
pytest.importorskip("plotly", reason="the dashboard needs plotly: pip install -e '.[dashboard]'")

STEP_AT = 5
GGUF = "smollm2/gguf-cpu"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("dashboard")
    nights = dashboard_nights(root / "nightly", n=8, step_at=STEP_AT)
    assert main(["dashboard", str(root / "nightly"), "--out", str(root / "site")]) == 0
    return root / "site", nights


def _figures(page: Path) -> dict[str, dict]:
    """The plotly figures a page draws, by element id (what site.js hands to Plotly.newPlot)."""
    calls = re.findall(r'harness\.plot\(("[^"]+"),(.*?)\)</script>', page.read_text())
    return {json.loads(chart_id): json.loads(figure) for chart_id, figure in calls}


def _values(nights: list[Path], backend: str, metric: str) -> pd.DataFrame:
    rows = []
    for night in nights:
        table = pd.read_parquet(night / "results.parquet")
        row = table[(table.backend == backend) & (table.metric == metric)].iloc[0]
        rows.append({"run_id": night.name, "value": row.value, "ci_low": row.ci_low, "ci_high": row.ci_high})
    return pd.DataFrame(rows)


def test_the_site_has_every_page_and_fetches_nothing(site):
    root, nights = site
    pages = {p.relative_to(root).as_posix() for p in root.rglob("*.html")}
    assert {"index.html", "runs.html", "quantization.html", "decoding.html", "metrics/decode_tok_s.html",
            "metrics/kld_mean.html", "metrics/bits_per_byte.html"} <= pages
    assert {f"runs/{n.name}.html" for n in nights} <= pages
    # one copy of plotly's JavaScript, loaded by relative path from every page with a chart
    scripts = [p for p in root.rglob("*") if p.is_file() and p.suffix == ".js"]
    assert sorted(p.relative_to(root).as_posix() for p in scripts) == ["assets/plotly.min.js", "assets/site.js"]
    for rel in pages:
        text = (root / rel).read_text()
        assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", text), rel
        assert "plotly.js v" not in text and len(text) < 500_000, rel  # no inlined copy
        for link in re.findall(r"""(?:src|href)='([^'#]+)""", text):
            assert (root / rel).parent.joinpath(link).resolve().is_file(), (rel, link)
    run_page = root / f"runs/{nights[0].name}.html"
    assert "<script src='../assets/plotly.min.js'></script>" in run_page.read_text() and _figures(run_page)
    assert len((root / "assets/plotly.min.js").read_bytes()) > 1_000_000


def test_overview_shows_last_value_and_changes_coloured_by_verdict(site):
    root, nights = site
    decode = _values(nights, "gguf-cpu", "decode_tok_s")["value"].to_numpy()
    last, prev, before = decode[-1], decode[-2], float(np.median(decode[:STEP_AT]))
    page = (root / "index.html").read_text()
    row = re.search(r"<tr><th class='cell'>smollm2/gguf-cpu/speed</th>(.*?)</tr>", page).group(1)
    cell = re.search(r"href='metrics/decode_tok_s.html#nightly-speed'>(<svg.*?</svg>)</a><div>(.*?)</div>", row)
    spark, changes = cell.groups()
    assert "data-points='8'" in spark and spark.count("<line") == 1  # one change point
    assert f"<span class='last' title='tokens/s'>{fmt_value(last)}</span>" in changes
    assert f"{(last / prev - 1) * 100:+.1f}%</span>" in changes  # a night apart: inside the gate
    step = re.search(r"<a class='(\w+) step' href='runs/(\S+?)\.html'[^>]*>([^<]+)</a>", changes)
    assert step.groups() == ("regressed", nights[STEP_AT].name,
                             f"{(last / before - 1) * 100:+.1f}% since {nights[STEP_AT].name[4:6]}-"
                             f"{nights[STEP_AT].name[6:8]}")
    # gguf-b stayed put: no step in its row, and the step list names only gguf-cpu's speed
    steady = re.search(r"<tr><th class='cell'>smollm2/gguf-b/speed</th>(.*?)</tr>", page).group(1)
    assert " step'" not in steady
    listed = re.findall(r"<li><span class='regressed'>regressed</span> <a href='metrics/(\w+)\.html#([\w-]+)'>"
                        r"smollm2/gguf-cpu/speed", page)
    assert ("decode_tok_s", "nightly-speed") in listed


def test_metric_page_holds_each_night_with_its_ci_change_point_and_machine_change(site):
    root, nights = site
    figure = _figures(root / "metrics/decode_tok_s.html")["nightly-speed-chart"]
    traces = {t["name"]: t for t in figure["data"]}
    assert set(traces) == {GGUF, "smollm2/gguf-b", f"{GGUF} CI", "smollm2/gguf-b CI", "change point"}
    expected = _values(nights, "gguf-cpu", "decode_tok_s")
    line = traces[GGUF]
    assert line["y"] == pytest.approx(expected["value"].tolist(), rel=1e-5)
    assert [c[0] for c in line["customdata"]] == expected["run_id"].tolist()
    assert [c[1] for c in line["customdata"]] == [f"c0ffee{i:02d}" for i in range(8)]
    assert [c[4] for c in line["customdata"]] == [f"../runs/{n.name}.html" for n in nights]
    assert line["customdata"][0][2] == f"CI [{fmt_value(expected.ci_low[0])}, {fmt_value(expected.ci_high[0])}]<br>"
    # the band: the CI's upper ends, then the lower ends backwards
    band = traces[f"{GGUF} CI"]
    assert band["y"] == pytest.approx(expected.ci_high.tolist() + expected.ci_low.tolist()[::-1], rel=1e-5)
    # torch changed before night 3: that point is a diamond and says so
    assert [i for i, s in enumerate(line["marker"]["symbol"]) if s == "diamond"] == [3]
    assert "changed: torch 2.12.1 → 2.13.0" in line["customdata"][3][3]
    cp = traces["change point"]
    assert cp["x"] == [line["x"][STEP_AT]] and cp["y"] == [line["y"][STEP_AT]]
    assert "regressed" in cp["hovertext"][0] and nights[STEP_AT].name in cp["hovertext"][0]
    assert figure["layout"]["yaxis"]["type"] == "linear"  # 60 to 95 tokens/s: no decade
    # a metric spanning decades gets a log axis: KLD of q8_0 (0.0008) beside nf4 (0.05)
    kld = _figures(root / "metrics/kld_mean.html")["nightly-kld-wiki-chart"]
    assert kld["layout"]["yaxis"]["type"] == "log"
    assert {t["name"] for t in kld["data"]} == {f"smollm2/{name}" for name, *_ in VARIANTS}


def test_quantization_and_decoding_views_are_the_latest_runs(site):
    root, nights = site
    figures = _figures(root / "quantization.html")
    size = figures["quantization-0"]
    front = next(t for t in size["data"] if t["name"] == "Pareto front")
    families = {t["name"]: t for t in size["data"] if t["mode"].startswith("markers")}
    # the points by family, each its colour: three GGUF rungs, bitsandbytes NF4 at load
    assert {name: t["text"] for name, t in families.items()} == {"gguf": ["q8_0", "q4_k_m", "q4_0"], "bnb": ["nf4"]}
    assert families["gguf"]["marker"]["color"] != families["bnb"]["marker"]["color"]
    # nf4 is bigger and worse than q4_k_m: off the front; the others trade size for KLD
    last = pd.read_parquet(nights[-1] / "results.parquet")
    kld = {b: last[(last.backend == b) & (last.metric == "kld_mean")].value.iloc[0] for b in ("q4_0", "q4_k_m", "q8_0")}
    assert front["y"] == pytest.approx(list(kld.values()), rel=1e-5)
    page = (root / "quantization.html").read_text()
    assert "<td>bnb</td><td>nf4</td>" in page and "<td>gguf</td><td>Q4_K_M</td>" in page
    assert "quantization-same_top1-0" in figures
    decoding = _figures(root / "decoding.html")
    entropy = decoding["decoding-0"]["data"]
    assert len(entropy) == 1 and entropy[0]["x"] == [0.0, 0.7, 1.0]
    assert entropy[0]["y"] == pytest.approx(
        [last[(last.task == f"decode.native.{t}") & (last.metric == "entropy_mean")].value.iloc[0]
         for t in ("greedy", "t0.7", "t1")], rel=1e-5)


def test_runs_page_marks_the_library_change(site):
    root, nights = site
    page = (root / "runs.html").read_text()
    assert "In every run: cpu test CPU; cpu_count 2; numpy 2.3.1." in page
    rows = re.findall(r"<tr><td><a href='runs/([\d-]+)\.html'>.*?</tr>", page)
    marked = re.findall(r"<tr><td><a href='runs/([\d-]+)\.html'>(?:(?!<tr>).)*<td class='env-changed' "
                        r"title='was 2\.12\.1'>▲ 2\.13\.0</td></tr>", page)
    assert rows == [n.name for n in reversed(nights)]  # newest first
    assert marked == [nights[3].name]


def test_runs_of_two_suites_and_replacing_a_site(tmp_path, capsys):
    nightly = dashboard_nights(tmp_path / "nightly", n=3)
    other = [write_run(tmp_path / "other" / f"r{i}", [perplexity_cell(np.random.default_rng(i))], suite="other",
                       started_at=f"2026-11-0{i + 1}T02:00:00+00:00") for i in range(2)]
    out = tmp_path / "site"
    assert main(["dashboard", str(tmp_path / "nightly"), str(other[0]), str(other[1]), "--out", str(out)]) == 0
    assert "5 runs" in capsys.readouterr().out
    index = (out / "index.html").read_text()
    assert "<h2>nightly</h2>" in index and "<h2>other</h2>" in index
    charts = _figures(out / "metrics/bits_per_byte.html")
    assert set(charts) == {"nightly-ppl-wiki-chart", "other-ppl-wiki-chart"}
    # a second build replaces the first (no page of a run that is gone remains)
    assert main(["dashboard", str(nightly[0]), str(nightly[1]), "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == [f"{n.name}.html" for n in nightly[:2]]
    # but a folder that is not a site is left alone
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["dashboard", str(tmp_path / "nightly"), "--out", str(tmp_path / "mine")]) == 2
    assert "is not a site of harness dashboard" in capsys.readouterr().err
    assert main(["dashboard", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_a_rebuild_keeps_the_pages_of_unchanged_runs(tmp_path):
    nights = dashboard_nights(tmp_path / "nightly", n=4)
    out = tmp_path / "site"
    assert main(["dashboard", str(tmp_path / "nightly"), "--out", str(out)]) == 0
    for night in nights:  # mark each page: a kept page keeps the mark
        page = out / "runs" / f"{night.name}.html"
        page.write_text(page.read_text() + "<!-- kept -->")
    # the last night re-written with other figures, and a fifth night
    dashboard_nights(tmp_path / "more", n=5)
    last = nights[-1]
    (last / "results.parquet").write_bytes((tmp_path / "more" / "20261114-020000" / "results.parquet").read_bytes())
    (tmp_path / "more" / "20261114-020000").rename(tmp_path / "nightly" / "20261114-020000")
    assert main(["dashboard", str(tmp_path / "nightly"), "--out", str(out)]) == 0
    kept = {p.stem for p in (out / "runs").iterdir() if p.read_text().endswith("<!-- kept -->")}
    assert kept == {n.name for n in nights[:-1]}
    assert sorted(p.stem for p in (out / "runs").iterdir()) == [n.name for n in nights] + ["20261114-020000"]


def test_a_busy_night_is_marked_in_the_hover_and_never_judged(tmp_path):
    """The last nights ran on a busy machine, 3x slower: their points are crosses whose hover says why (and
    the machine canary's time), the overview calls the change not comparable (never regressed)."""
    from runs import SUITE, backend, throughput_cell

    for night in range(6):
        rng = np.random.default_rng(500 + night)
        slow = 3.0 if night >= 4 else 1.0
        record = throughput_cell(rng, backend("gguf-cpu"), decode=90 / slow, prefill=230 / slow, cv=0.02)
        record["resolved"]["contention"] = {"verdict": "quiet", "canary_median_s": 0.02 * slow}
        if night >= 4:
            record["resolved"]["contention"].update(verdict="busy", reasons=["other processes used 1.8 of 2 cores"])
        write_run(tmp_path / SUITE / f"202611{10 + night:02d}-020000", [record],
                  started_at=f"2026-11-{10 + night:02d}T02:00:00+00:00")
    assert main(["dashboard", str(tmp_path / SUITE), "--out", str(tmp_path / "site")]) == 0
    trace = next(t for t in _figures(tmp_path / "site" / "metrics" / "decode_tok_s.html").values()
                 for t in t["data"] if t.get("mode") == "lines+markers")
    assert trace["marker"]["symbol"] == ["circle"] * 4 + ["x"] * 2
    assert "machine busy</b>: other processes used 1.8 of 2 cores" in trace["customdata"][-1][2]
    assert "machine canary 60 ms" in trace["customdata"][-1][2] and "canary 20 ms" in trace["customdata"][0][2]
    index = (tmp_path / "site" / "index.html").read_text()
    assert "not comparable (machine busy: other processes used 1.8 of 2 cores)" in index
    assert "class='regressed' title=" not in index and "class='regressed step'" not in index


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if not p.is_dir()}


def test_names_from_results_never_become_paths_out_of_the_site(tmp_path):
    """A metric called ../../../SHARD_ESCAPE (from a results.parquet that travelled) gets a page inside
    --out, and tasks 'p 1' and 'p_1' a chart each."""
    hostile_nights(tmp_path / "runs")
    out = tmp_path / "deep" / "a" / "b" / "site"
    before = _files(tmp_path)
    assert main(["dashboard", str(tmp_path / "runs"), "--out", str(out)]) == 0
    outside = {p for p in _files(tmp_path) - before if out not in p.parents}
    assert outside == set()
    assert [p.parent for p in tmp_path.glob("**/*SHARD_ESCAPE*")] == [out / "metrics"]
    pages = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html"))
    assert all(re.fullmatch(r"[A-Za-z0-9_./-]+", page) for page in pages), pages
    metric_pages = [p for p in pages if p.startswith("metrics/")]
    assert len(metric_pages) == len(set(map(str.lower, metric_pages))) == 9  # 6 metrics + 3 crafted names
    charts = _figures(out / "metrics/bits_per_byte.html")
    assert len(charts) == 3  # 'p 1', 'p_1' and the crafted task: three charts, three element ids
    titles = {figure["layout"]["title"]["text"] for figure in charts.values()}
    assert titles == {"p 1 on wiki", "p_1 on wiki", html.escape(XSS) + " on wiki"}


def test_names_from_results_reach_every_page_escaped(tmp_path):
    """Markup in metric, task, model, run and library names is text on every page: escaped in HTML, and
    inside a chart's <script> no '<' at all (so neither </script> nor <!-- can end or bend it)."""
    pages = hostile_site(tmp_path)
    out = tmp_path / "site"
    for page in pages:
        text = page.read_text()
        for crafted in (XSS, SCRIPT_XSS, "<img", "window.__pwned=2</script>"):
            assert crafted not in text, (page, crafted)
        for script in re.findall(r"<script>(.*?)</script>", text, flags=re.S):
            assert "<" not in script, page
        if "<nav>" in text:  # every page of the site but the run reports: the metrics menu names each metric
            assert html.escape(XSS) in text and html.escape(ESCAPE) in text, page
    assert f"torch {html.escape(XSS)}" in (out / "runs.html").read_text()  # a library version, as text


def test_the_site_folder_follows_the_umask(tmp_path):
    dashboard_nights(tmp_path / "nightly", n=2)
    old = os.umask(0o022)
    try:
        assert main(["dashboard", str(tmp_path / "nightly"), "--out", str(tmp_path / "site")]) == 0
    finally:
        os.umask(old)
    for path in [tmp_path / "site", *(tmp_path / "site").rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path
