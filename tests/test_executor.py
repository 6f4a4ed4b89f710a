"""The executor as a run setting (no cluster here): it never moves a cell id, the command line wins over the
suite, `validate` checks it without starting anything, a missing `ray` is the usual one-line error; what a
cell asks of a cluster node; `compare` notes other hardware, never a cluster node's id alone."""

from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pytest
from conftest import REPO
from runs import perplexity_cell, write_run

from harness.analysis import compare
from harness.analysis.gates import Gates
from harness.cli import main
from harness.results.store import read_run
from harness.run.ray_node import code_fingerprint, run_here
from harness.run.ray_placement import Demand, demand
from harness.suite.cells import expand
from harness.suite.parse import parse_suite

QUICKSTART = REPO / "suites" / "quickstart.yaml"


def test_the_executor_never_enters_a_cell_id():
    local = {c.label: c.cell_id for c in expand(parse_suite(QUICKSTART)[0])}
    ray = parse_suite(QUICKSTART, ["executor.type=ray", "executor.address=auto", "executor.exclusive=all",
                                   "executor.connect_timeout_s=5"])[0]
    assert ray.executor.type == "ray" and ray.executor.connect_timeout_s == 5
    assert {c.label: c.cell_id for c in expand(ray)} == local


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    assert main(["validate", str(QUICKSTART), "--executor", "ray"]) == 2
    assert capsys.readouterr().err == ("harness: error: --executor ray needs the Python package 'ray', which is not "
                                       "installed: pip install 'harness[ray]'\n")
    assert main(["validate", str(QUICKSTART), "--set", "executor.type=ray"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"harness: error: {QUICKSTART}: executor.type: ray needs the Python package 'ray'")
    assert main(["run", str(QUICKSTART), "--executor", "ray", "--out", "never-written"]) == 2
    assert "pip install 'harness[ray]'" in capsys.readouterr().err


@pytest.mark.gguf
@pytest.mark.hf
@pytest.mark.bnb
@pytest.mark.models
def test_the_command_line_executor_overrides_the_suites_without_ray(monkeypatch):
    """The quickstart's backends (llama.cpp, transformers, bitsandbytes) are checked: its extras are needed."""
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    assert main(["validate", str(QUICKSTART), "--executor", "local", "--set", "executor.type=ray"]) == 0


@pytest.mark.parametrize("argv, expected", [
    (["--address", "10.0.0.1:6379"], "--address 10.0.0.1:6379: applies to --executor ray"),
    (["--executor", "ray", "--address", "head"], "--address head: address: expected auto or HOST:PORT, got 'head'"),
    (["--set", "executor.address=auto"], "executor: address applies to type ray"),
    (["--set", "executor.exclusive=some"], "executor.exclusive: Input should be 'timing' or 'all'"),
    (["--set", "executor.connect_timeout_s=0"], "executor.connect_timeout_s: Input should be greater than 0"),
    (["--set", "executor.connect_timeout_s=.inf"], "executor.connect_timeout_s: Input should be a finite number"),
    (["--set", "executor.connect_timeout_s=soon"], "executor.connect_timeout_s: Input should be a valid number"),
])
def test_bad_executor_settings_are_bad_input(argv, expected, capsys):
    assert main(["validate", str(QUICKSTART), *argv]) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.ray
def test_a_cluster_address_where_nothing_answers_is_one_line_after_the_connect_timeout(tmp_path, capsys):
    """Ray alone would try for a quarter of an hour; the setting bounds it, and the error is the environment's."""
    pytest.importorskip("ray", reason="needs the ray extra: pip install -e '.[ray]'")
    with socket.socket() as closed:  # bound, never listening: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
        assert main(["run", str(QUICKSTART), "--executor", "ray", "--address", address, "--out", str(tmp_path / "r"),
                     "--set", "executor.connect_timeout_s=1.5"]) == 4
    assert capsys.readouterr().err == (f"harness: error: Ray cluster at {address}: nothing answered within 1.5 s "
                                       "(executor.connect_timeout_s): connection refused (ECONNREFUSED)\n")


@pytest.mark.ray
def test_validate_checks_an_address_without_joining_it(capsys):
    pytest.importorskip("ray", reason="needs the ray extra: pip install -e '.[ray]'")
    # nothing listens on port 1: validate must not try
    assert main(["validate", str(QUICKSTART), "--executor", "ray", "--address", "127.0.0.1:1"]) == 0
    assert "ok, 12 cells" in capsys.readouterr().out


def _cell(suite_yaml_overrides: list[str], label: str):
    suite = parse_suite(REPO / "suites" / "nightly.yaml", suite_yaml_overrides)[0]
    return next(c for c in expand(suite) if c.label == label)


def test_what_a_cell_asks_of_a_node():
    assert demand(_cell([], "word-4/ngram/ppl"), "timing") == Demand(cpus=1, gpus=0, exclusive=False)
    assert demand(_cell([], "smollm2-135m/gguf-cpu/ppl"), "timing") == Demand(cpus=2, gpus=0, exclusive=False)
    assert demand(_cell([], "smollm2-135m/gguf-cpu/speed"), "timing") == Demand(cpus=2, gpus=0, exclusive=True)
    assert demand(_cell([], "smollm2-135m/hf-cuda/ppl"), "timing") == Demand(cpus=None, gpus=1, exclusive=True)
    assert demand(_cell([], "word-4/ngram/ppl"), "all").exclusive
    offload = _cell(["backends.gguf-cpu.n_gpu_layers=-1"], "smollm2-135m/gguf-cpu/ppl")
    assert demand(offload, "timing") == Demand(cpus=2, gpus=1, exclusive=False)


def _run_where(path, where: dict | None):
    record = perplexity_cell(np.random.default_rng(7))
    if where is not None:
        record["resolved"]["where"] = where
    return write_run(path, [record])


def test_compare_notes_other_hardware_but_not_another_node_id(tmp_path):
    here = {"hostname": "a", "cpu": "EPYC", "gpu": [], "ray_node_id": "n1", "host": "a"}
    runs = {name: read_run(_run_where(tmp_path / name, where)) for name, where in [
        ("base", here), ("new-node", {**here, "ray_node_id": "n2", "process_started_at": "x"}),
        ("other-cpu", {**here, "hostname": "b", "cpu": "Xeon"}), ("before-where", None)]}

    def notes(new):
        return {r.note for r in compare.compare(runs["base"], runs[new], Gates({}, {}, {})).rows}

    assert notes("new-node") == {""}
    assert notes("other-cpu") == {"ran on other hardware: hostname a → b, cpu EPYC → Xeon"}
    # a run from before records said where: its run.json's machine (cpu "test CPU"), no hostname to compare
    assert notes("before-where") == {"ran on other hardware: cpu EPYC → test CPU"}
    assert json.loads(compare.to_json(compare.compare(runs["base"], runs["new-node"], Gates({}, {}, {}))))[
        "regressions"] == 0


def test_a_node_running_other_harness_code_refuses_the_cell(tmp_path):
    """Checked before the job is even read: no worker starts with code that is not the driver's."""
    report = run_here(None, {}, {}, 60.0, "0" * 64, tmp_path, "m7")
    assert report["error"] == (f"on m7: the harness code differs from the driver's (sha256 {code_fingerprint()[:12]}… "
                               "here, 000000000000… there): install the same harness on every node")
    assert report["record"] is None and not list(tmp_path.iterdir())
