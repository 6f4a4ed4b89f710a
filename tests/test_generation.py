"""Generation and throughput on the real SmolLM2 GGUF: greedy tokens as llama-cpp-python's own API
makes them, exact token counts for timing runs, and the cell's peak RSS as /usr/bin/time sees it."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import SMOLLM2_PKG

from harness.core.decoding import Decoding

pytestmark = [pytest.mark.integration, pytest.mark.gguf]
PROMPT = "The history of the Roman Empire"


@pytest.fixture(scope="module")
def backend(smollm2_llamacpp):
    return smollm2_llamacpp


def test_greedy_tokens_match_llama_cpp_python(backend, smollm2_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    ours = backend.generate(backend.tokenizer.prompt(PROMPT), Decoding(temperature=0), 24)
    llm = llama_cpp.Llama(str(smollm2_path), n_ctx=256, n_threads=2, verbose=False)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=backend.tokenizer.add_bos, special=False)
    theirs = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        if llm.token_eos() == token or len(theirs) == 24:
            break
        theirs.append(token)
    llm.close()
    assert ours.tokens == theirs
    assert len(ours.max_prob) == len(ours.times) >= len(ours.tokens)
    assert ours.prefill_s < ours.times[0] and all(np.diff(ours.times) > 0)


def test_timing_runs_make_exactly_the_tokens_asked_for(backend):
    gen = backend.generate(backend.tokenizer.prompt("Hi"), Decoding(temperature=0), 40, ignore_eos=True,
                           trace=False)
    assert len(gen.tokens) == len(gen.times) == 40 and gen.max_prob == []


def test_cell_peak_rss_agrees_with_usr_bin_time(tmp_path):
    """GNU time reports the largest maximum RSS of the run's processes: the cell's worker here."""
    if not Path("/usr/bin/time").exists():
        pytest.skip("needs GNU time at /usr/bin/time")
    suite = {"name": "rss", "models": {"m": {"gguf": SMOLLM2_PKG}},
             "backends": {"cpu": {"type": "llamacpp", "n_threads": 2}},
             "tasks": {"speed": {"type": "throughput", "prompt_tokens": 128, "new_tokens": 16, "repeats": 2,
                                 "warmup": 0}},
             "matrix": [{"model": "m", "backend": "cpu", "task": "speed"}],
             "probe": False}  # the probe's arrays would be the run's largest RSS
    path = tmp_path / "rss.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "run"
    done = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "harness", "run", str(path), "--out",
                           str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    table = pd.read_parquet(out / "results.parquet").set_index("metric")
    ours = table.loc["peak_rss_mb", "value"]
    assert ours == pytest.approx(kib / 1024, rel=0.05)
    memory = json.loads(table.params.iloc[0])["resolved"]["memory"]
    assert memory["sampled_peak_mb"] == pytest.approx(memory["ru_maxrss_mb"], rel=0.05)
    assert memory["rss_before_load_mb"] < memory["rss_after_load_mb"] <= ours
