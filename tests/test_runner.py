"""Cells run isolated: a crash or timeout is recorded for that cell, the others' results are kept, and
--resume finishes the rest without recomputing anything."""

import json
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest
from conftest import SMOLLM2_PKG

from harness.cli import main
from harness.results.store import COLUMNS
from suites import smollm2_suite

pytestmark = [pytest.mark.integration, pytest.mark.gguf]

TASKS = {name: {"type": "perplexity", "dataset": "docs", "window": window, "n_ctx": 128, "max_tokens": 1024}
         for name, window in (("chunked", "chunked"), ("sliding", "sliding"), ("rolling", "rolling"))}
MATRIX = [{"model": "smollm2", "backend": "gguf", "task": list(TASKS)}]


def cell_ids(path, capsys):
    assert main(["run", str(path), "--dry-run"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "/gguf/" in ln]
    return {ln.split()[1].split("/")[-1]: ln.split()[0] for ln in lines}


def records(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")
            if not p.name.endswith(".job.json")}


def test_killed_cell_is_recorded_and_resume_finishes_only_it(tmp_path, capsys):
    path = smollm2_suite(tmp_path, tasks=TASKS, matrix=MATRIX)
    ids = cell_ids(path, capsys)
    out = tmp_path / "run"
    runner = subprocess.Popen([sys.executable, "-m", "harness", "run", str(path), "--out", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim_job = out / "cells" / f"{ids['sliding']}.job.json"
    deadline = time.time() + 300
    victim = None
    while victim is None and time.time() < deadline and runner.poll() is None:
        for child in psutil.Process(runner.pid).children(recursive=True):
            try:
                if str(victim_job) in child.cmdline():
                    victim = child
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.05)
    assert victim is not None, "the second cell's worker never started"
    victim.send_signal(signal.SIGKILL)  # a crash in native code looks like this to the runner
    assert runner.wait(timeout=300) == 3

    table = pd.read_parquet(out / "results.parquet")
    assert list(table.columns) == COLUMNS
    status = table.groupby("cell_id")["status"].first().to_dict()
    assert status == {ids["chunked"]: "ok", ids["sliding"]: "failed", ids["rolling"]: "ok"}
    reason = table.loc[table.cell_id == ids["sliding"], "reason"].iloc[0]
    assert reason.startswith("crashed: killed by SIGKILL")
    assert set(table.loc[table.status == "ok", "metric"]) >= {"token_ppl", "bits_per_byte", "peak_rss_mb"}
    assert pd.read_csv(out / "results.csv").shape == table.shape
    before = records(out)

    assert main(["run", str(path), "--out", str(out), "--resume"]) == 0
    after = records(out)
    for name in ("chunked", "rolling"):  # untouched: same record, same end time
        assert after[ids[name]] == before[ids[name]]
    assert after[ids["sliding"]]["status"] == "ok"
    table = pd.read_parquet(out / "results.parquet")
    assert (table.status == "ok").all()
    assert table.groupby("cell_id").size().min() >= 8
    assert not list(out.rglob("*.tmp"))


def test_timeout_kills_the_cell_and_the_run_goes_on(tmp_path, capsys, corpora_dir):
    # the slow cell scores all of WikiText-2 through SmolLM2 (~290k tokens: minutes on any CPU), the fast one
    # 256 tokens through a word 2-gram (no native threads to spin: a second or two, well under the timeout
    # even on a machine loaded many times over, where llama.cpp's spinning threads are not)
    tasks = {"slow": {**TASKS["chunked"], "dataset": "wiki", "max_tokens": None, "n_ctx": 512},
             "fast": {**TASKS["chunked"], "max_tokens": 256}}
    datasets = {"docs": {"source": "builtin:stdlib-docs#test"},
                "wiki": {"source": f"file:{corpora_dir / 'wikitext-2-raw' / 'wiki.test.raw'}"}}
    models = {"smollm2": {"gguf": SMOLLM2_PKG}, "w2": {"ngram": {"order": 2, "train": "builtin:stdlib-docs#train"}}}
    path = smollm2_suite(tmp_path, tasks=tasks, datasets=datasets, models=models,
                         backends={"gguf": {"type": "llamacpp", "n_threads": 2}, "ngram": {"type": "ngram"}},
                         matrix=[{"model": "smollm2", "backend": "gguf", "task": "slow"},
                                 {"model": "w2", "backend": "ngram", "task": "fast"}])
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--timeout", "30"]) == 3
    table = pd.read_parquet(out / "results.parquet")
    slow = table[table.task == "slow"]
    assert slow.status.tolist() == ["timeout"] and slow.reason.iloc[0] == "timed out after 30 s"
    assert (table[table.task == "fast"].status == "ok").all()


def test_exception_in_a_cell_is_its_reason(tmp_path, capsys):
    tasks = {"too-long": {**TASKS["chunked"], "max_tokens": 100}}  # fewer tokens than one window
    path = smollm2_suite(tmp_path, tasks=tasks, matrix=[{"model": "smollm2", "backend": "gguf", "task": "too-long"}])
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 3
    table = pd.read_parquet(out / "results.parquet")
    assert table.reason.tolist() == ["ValueError: the text has 100 tokens, fewer than one chunked window of n_ctx=128"]
    assert "Traceback" in next((out / "logs").glob("*.log")).read_text()


def test_resume_without_out_continues_the_suites_latest_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tasks = {"small": {**TASKS["rolling"], "max_tokens": 200}}
    path = smollm2_suite(tmp_path, name="resumable", tasks=tasks,
                         matrix=[{"model": "smollm2", "backend": "gguf", "task": "small"}])
    assert main(["run", str(path)]) == 0
    runs = list((tmp_path / "results" / "resumable").iterdir())
    assert len(runs) == 1
    assert main(["run", str(path), "--resume"]) == 0
    assert "0 cells ran, 1 reused" in capsys.readouterr().out
    assert list((tmp_path / "results" / "resumable").iterdir()) == runs
    run_info = json.loads((runs[0] / "run.json").read_text())
    assert run_info["models"]["smollm2"]["sha256"] and run_info["ended_at"]
    assert run_info["environment"]["libraries"]["llama-cpp-python"] == "0.3.36"


def test_resume_after_a_setting_changed_reports_only_the_suites_cells(tmp_path, capsys):
    out = tmp_path / "run"
    tasks = {"small": {**TASKS["rolling"], "max_tokens": 200}}
    matrix = [{"model": "smollm2", "backend": "gguf", "task": "small"}]
    assert main(["run", str(smollm2_suite(tmp_path, tasks=tasks, matrix=matrix)), "--out", str(out)]) == 0
    tasks["small"]["max_tokens"] = 150  # a different cell now; the old record stays on disk
    assert main(["run", str(smollm2_suite(tmp_path, tasks=tasks, matrix=matrix)), "--out", str(out),
                 "--resume"]) == 0
    assert "1 cells ran, 0 reused" in capsys.readouterr().out
    table = pd.read_parquet(out / "results.parquet")
    assert table.cell_id.nunique() == 1
    assert table.set_index("metric").loc["tokens_scored", "value"] == 150
