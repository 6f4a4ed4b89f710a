"""The quickstart is the product's first impression: it must show all three task families, and its
summary must be readable in a 100-column terminal."""

import numpy as np
from conftest import REPO
from rich.console import Console
from runs import backend, failed_cell, perplexity_cell, throughput_cell, write_run

from harness.cli import main
from harness.report.console import console_value, family_tables, print_results
from harness.results.store import read_run
from harness.suite.cells import expand
from harness.suite.parse import parse_suite


def test_the_quickstart_covers_quality_behaviour_and_cost():
    cells = expand(parse_suite(REPO / "suites" / "quickstart.yaml")[0])
    by_type = {}
    for cell in cells:
        by_type.setdefault(cell.task_spec.type, set()).add(cell.backend_spec.type)
    assert {"perplexity", "decoding", "throughput"} <= set(by_type)
    assert by_type["perplexity"] == {"llamacpp", "hf", "ngram"}
    assert {"llamacpp", "ngram"} <= by_type["decoding"] and {"llamacpp", "ngram"} <= by_type["throughput"]
    decoding = [c.task_spec for c in cells if c.task_spec.type == "decoding"]
    assert {d.decodings()[0].temperature for d in decoding} >= {0, 0.7}  # greedy and a temperature sweep


def test_the_summary_is_one_table_per_family_within_100_columns(tmp_path):
    rng = np.random.default_rng(0)
    busy = perplexity_cell(rng)  # its timings were measured on a busy machine: the table gains a column
    busy["resolved"]["contention"] = {"verdict": "busy", "reasons": ["its threads waited for a CPU 16% of the time"]}
    run = write_run(tmp_path / "run", [
        busy, perplexity_cell(rng, backend("hf-cpu"), nll=3.36, model_bytes=538_060_288),
        throughput_cell(rng), failed_cell(backend("hf-cuda"), reason="crashed: killed by SIGKILL"),
    ])
    console = Console(width=100, record=True)
    print_results(run, console)
    text = console.export_text()
    assert max(map(len, text.splitlines())) <= 100
    titles = [line.strip() for line in text.splitlines() if line.startswith("nightly — ")]
    assert titles == ["nightly — perplexity", "nightly — throughput"]
    assert "smollm2/hf-cuda/ppl: failed: crashed: killed by SIGKILL" in text.split("nightly — throughput")[1]
    tables = dict(family_tables(read_run(run).results))
    assert {"token ppl", "bits/byte", "model MiB"} <= set(tables["perplexity"].columns)
    assert "decode tok/s" not in tables["perplexity"].columns
    assert {"prefill tok/s", "decode tok/s", "TTFT s", "peak RSS MiB"} <= set(tables["throughput"].columns)
    for wide in tables.values():  # no value is broken over two lines (headers may be)
        for value in wide.drop(columns=["model", "backend", "task"]).to_numpy().ravel():
            assert not value or value in text, value
    assert (console_value("mbu", 0.07187), console_value("scored_tok_s", 1_170_938),
            console_value("ttft_s", 0.00013183)) == ("7.2%", "1.17M", "0.000132")


def test_list_names_only_capabilities_a_task_needs(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "(needs )" not in out and "tokenization," in out.replace("tokenization\n", "tokenization,")


def test_report_html_renders_the_header_markdown(tmp_path):
    run = write_run(tmp_path / "run", [perplexity_cell(np.random.default_rng(0))])
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "of suite <strong>nightly</strong>" in page and "**" not in page
    assert "<code>run</code>" in page
