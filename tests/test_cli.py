"""The command line as a user meets it: good suites run, bad input is one line and exit code 2."""

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO

from harness.backends import BACKENDS
from harness.cli import main
from suites import smollm2_suite, write_suite


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def rewrite(path, mutate):
    data = yaml.safe_load(path.read_text())
    mutate(data)
    path.write_text(yaml.safe_dump(data))
    return path


BAD_SUITES = {
    "unknown key": (lambda d: d["tasks"]["ppl"].update(windw="chunked"), "tasks.ppl.windw: unknown key"),
    "wrong type": (lambda d: d["tasks"]["ppl"].update(n_ctx="big"), "tasks.ppl.n_ctx: Input should be a valid integer"),
    "bad backend type": (lambda d: d["backends"]["gguf"].update(type="onnx"), "backends.gguf.type"),
    "undefined model": (lambda d: d["matrix"][0].update(model="nope"), "matrix[0].model: model 'nope' is not defined"),
    "undefined backend": (lambda d: d["matrix"][0].update(backend=["gguf", "x"]),
                          "matrix[0].backend: backend 'x' is not defined (defined: gguf)"),
    "undefined dataset": (lambda d: d["tasks"]["ppl"].update(dataset="wiki"),
                          "tasks.ppl.dataset: dataset 'wiki' is not defined (defined: docs)"),
    "missing model file": (lambda d: d["models"]["smollm2"].update(gguf="missing.gguf"),
                           "models.smollm2.gguf: file not found"),
    "missing package": (lambda d: d["models"]["smollm2"].update(gguf="pkg:no_such_pkg/m.gguf"),
                        "Python package 'no_such_pkg' is not installed"),
    "missing corpus file": (lambda d: d["datasets"]["docs"].update(source="file:nope.txt"),
                            "datasets.docs.source: file not found"),
    "unknown builtin": (lambda d: d["datasets"]["docs"].update(source="builtin:nope"), "unknown builtin 'nope'"),
    "corpora without dir": (lambda d: d["datasets"]["docs"].update(source="corpora:wikitext-2-raw/wiki.test.raw"),
                            "needs a corpora directory: pass --corpora DIR or set HARNESS_CORPORA"),
}


#: found after the suite's backend packages are checked (the suite's backend is llama.cpp's)
AFTER_THE_BACKEND_CHECK = {"missing model file", "missing package", "missing corpus file", "unknown builtin",
                           "corpora without dir"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.gguf) if c in AFTER_THE_BACKEND_CHECK else c
                                  for c in sorted(BAD_SUITES)])
@pytest.mark.parametrize("command", ["run", "validate"])
def test_bad_suite_is_one_line_exit_2_and_no_output(case, command, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HARNESS_CORPORA", raising=False)
    mutate, expected = BAD_SUITES[case]
    path = rewrite(smollm2_suite(tmp_path), mutate)
    out = tmp_path / "out"
    argv = [command, str(path)] + (["--out", str(out)] if command == "run" else [])
    assert main(argv) == 2
    line = error_line(capsys)
    assert line.startswith(f"harness: error: {path}: ")
    assert expected in line
    assert not out.exists()


def test_malformed_yaml_names_line_and_column(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodels:\n  m: {gguf: [unclosed\n")
    assert main(["validate", str(path)]) == 2
    line = error_line(capsys)
    assert f"{path}: line 4, column 1: invalid YAML" in line


@pytest.mark.gguf
def test_not_a_gguf_file(tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    path = rewrite(smollm2_suite(tmp_path), lambda d: d["models"]["smollm2"].update(gguf="model.gguf"))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "models.smollm2.gguf: " in (line := error_line(capsys))
    assert "is not a GGUF file (magic b'PK\\x03\\x04', expected b'GGUF')" in line


def test_missing_optional_dependency_names_the_extra(tmp_path):
    """Run the CLI in a process where llama_cpp cannot be imported (a blocked import)."""
    path = smollm2_suite(tmp_path)
    code = ("import sys; sys.modules['llama_cpp'] = None; from harness.cli import main; "
            f"sys.exit(main(['run', {str(path)!r}, '--out', {str(tmp_path / 'out')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"harness: error: {path}: backends.gguf.type: backend llamacpp needs the Python package 'llama_cpp', "
        "which is not installed: pip install 'harness[gguf]'")
    assert not (tmp_path / "out").exists()


@pytest.mark.gguf
@pytest.mark.models
def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    assert main(["run", str(smollm2_suite(tmp_path)), "--out", str(blocker / "run")]) == 2
    assert error_line(capsys) == (f"harness: error: {blocker / 'run'}: cannot be created, a part of its path is a "
                                  "file, not a folder")


def test_missing_suite_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert error_line(capsys) == f"harness: error: {tmp_path / 'nope.yaml'}: suite file not found"


def test_dry_run_lists_cells_and_writes_nothing(tmp_path, capsys):
    tasks = {"a": {"type": "perplexity", "dataset": "docs", "n_ctx": 64},
             "b": {"type": "perplexity", "dataset": "docs", "window": "rolling", "n_ctx": 64}}
    path = smollm2_suite(tmp_path, tasks=tasks, matrix=[{"model": "smollm2", "backend": "gguf", "task": ["a", "b"]}])
    out = tmp_path / "out"
    assert main(["run", str(path), "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "smollm2/gguf/a" in text and "smollm2/gguf/b" in text and "2 cells would run" in text
    assert main(["run", str(path), "--dry-run", "--only", "*/b"]) == 0
    assert "1 cells would run" in capsys.readouterr().out
    assert not out.exists()


def test_set_overrides_a_setting_and_errors_name_it(tmp_path, capsys):
    path = smollm2_suite(tmp_path)
    assert main(["run", str(path), "--dry-run", "--set", "tasks.ppl.max_tokens=256",
                 "--set", "tasks.ppl.n_ctx=64"]) == 0
    assert '"n_ctx": 64, "max_tokens": 256' in capsys.readouterr().out
    assert main(["run", str(path), "--dry-run", "--set", "tasks.ppl.max_tokens=null"]) == 0
    assert "max_tokens" not in capsys.readouterr().out
    assert main(["validate", str(path), "--set", "tasks.ppl.n_ctx=big"]) == 2
    assert error_line(capsys) == (f"harness: error: {path}: tasks.ppl.n_ctx: Input should be a valid integer, unable "
                                  "to parse string as an integer, got 'big' (from --set tasks.ppl.n_ctx=big)")
    assert main(["run", str(path), "--dry-run", "--set", "tasks.ppl.n_ctx.deep=1"]) == 2
    assert "tasks.ppl.n_ctx is not a mapping" in error_line(capsys)
    assert main(["run", str(path), "--dry-run", "--set", "tasks.ppl"]) == 2
    assert "expected KEY.PATH=VALUE" in error_line(capsys)


def test_shards_run_apart_assemble_into_one_run(tmp_path, capsys):
    """A long suite split over machines: each shard runs with --only into its own directory; their cell
    records copied into one directory and resumed there make the whole run's tables without re-running."""
    suite = {"name": "shards", "backends": {"ngram": {"type": "ngram"}},
             "models": {f"w{n}": {"ngram": {"order": n, "train": "builtin:stdlib-docs#train"}} for n in (2, 3)},
             "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}},
             "tasks": {"ppl": {"type": "perplexity", "dataset": "docs", "window": "rolling", "n_ctx": 128}},
             "matrix": [{"model": ["w2", "w3"], "backend": "ngram", "task": "ppl"}]}
    path = write_suite(tmp_path, suite)
    for shard in ("w2", "w3"):
        assert main(["run", str(path), "--only", f"{shard}/*", "--out", str(tmp_path / shard)]) == 0
    for record in (tmp_path / "w3" / "cells").glob("*.json"):
        shutil.copy(record, tmp_path / "w2" / "cells")
    capsys.readouterr()
    assert main(["run", str(path), "--resume", "--out", str(tmp_path / "w2")]) == 0
    assert "(0 cells ran, 2 reused, 0 failed, 0 skipped)" in capsys.readouterr().out
    whole = pd.read_parquet(tmp_path / "w2" / "results.parquet")
    shard = pd.read_parquet(tmp_path / "w3" / "results.parquet")
    ppl = whole[whole.metric == "token_ppl"].set_index("model").value
    assert ppl["w3"] == shard[(shard.model == "w3") & (shard.metric == "token_ppl")].value.item()
    assert ppl["w3"] < ppl["w2"]


def test_the_printed_report_command_is_shell_quoted(tmp_path, capsys):
    suite = {"name": "quoted", "backends": {"ngram": {"type": "ngram"}},
             "models": {"w2": {"ngram": {"order": 2, "train": "builtin:stdlib-docs#train"}}},
             "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}},
             "tasks": {"ppl": {"type": "perplexity", "dataset": "docs", "window": "rolling", "n_ctx": 128}},
             "matrix": [{"model": "w2", "backend": "ngram", "task": "ppl"}]}
    out = tmp_path / "it's [b]$HOME; run"  # a quote, rich markup, a variable, a command separator
    assert main(["run", str(write_suite(tmp_path, suite)), "--out", str(out)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("report:"))
    assert shlex.split(line) == ["report:", "harness", "report", str(out)]


def test_schema_is_json_schema_of_the_suite(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["required"]) >= {"name", "models", "backends", "tasks", "matrix"}
    assert "PerplexitySettings" in json.dumps(schema)


def test_list_and_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "harness", "list"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "llamacpp" in proc.stdout and "perplexity" in proc.stdout and "builtin:stdlib-docs" in proc.stdout


def extras_of(suite: Path) -> list[str]:
    """The install extras a suite's validation needs: its backends' packages, and models shipped as packages."""
    data = yaml.safe_load(suite.read_text())
    extras = {extra for spec in data["backends"].values()
              for _, extra in BACKENDS[spec["type"]].dependencies_for(spec)}
    return sorted(extras | ({"models"} if "pkg:" in json.dumps(data["models"]) else set()))


SHIPPED_SUITES = [pytest.param(path, id=path.stem, marks=[getattr(pytest.mark, e) for e in extras_of(path)])
                  for path in sorted((REPO / "suites").glob("*.yaml"))]


@pytest.mark.parametrize("suite", SHIPPED_SUITES)
def test_shipped_suites_validate(suite, corpora_dir):
    assert main(["validate", str(suite), "--corpora", str(corpora_dir)]) == 0
