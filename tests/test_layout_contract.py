"""The contract the package layout must keep: cell ids of every shipped suite, the rule that new settings
keys never move ids, versioned result files (older ones read, newer ones refused), registries that
suggest the nearest name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO
from pydantic import BaseModel

from harness.backends import BACKENDS
from harness.cli import main
from harness.core.errors import UserError
from harness.core.settings import StrictModel, is_new_key, new_key
from harness.results.records import read_cell_records
from harness.results.schema import SCHEMA
from harness.results.store import read_run
from harness.suite.cells import expand
from harness.suite.parse import parse_suite
from harness.tasks import TASKS

DATA = Path(__file__).parent / "data"


def test_every_shipped_suite_keeps_its_cell_ids():
    """tests/data/cell_ids.json lists every shipped suite's cells as the harness before the package
    layout computed them; ids are the key of --resume and compare, so they must not move. A suite edited
    on purpose updates its entry in the same commit (2026-12: the quickstart's old cells live on, same ids,
    in windows.yaml; tokenizers.yaml's hf cell gained a reference task, its other cells kept their ids)."""
    before = json.loads((DATA / "cell_ids.json").read_text())
    now = {path.name: {c.label: c.cell_id for c in expand(parse_suite(path)[0])}
           for path in sorted((REPO / "suites").glob("*.yaml")) if path.name in before}
    assert now == before


def _settings_classes() -> list[type[BaseModel]]:
    from harness.sources.corpora import DatasetSpec
    from harness.sources.models import ModelSpec, NgramSpec

    return [ModelSpec, NgramSpec, DatasetSpec, *(c.settings_class for c in BACKENDS.values()),
            *(c.settings_class for c in TASKS.values())]


#: the keys of each settings class when cell ids were fixed (schema 1): they are always hashed. Any key
#: added since must be declared with new_key(), which hashes it only when set.
HASHED_ALWAYS = json.loads((DATA / "hashed_keys.json").read_text())


def test_keys_added_after_ids_were_fixed_are_new_keys():
    for cls in _settings_classes():
        always = {name for name in cls.model_fields if not is_new_key(cls, name)}
        assert always <= set(HASHED_ALWAYS[cls.__name__]), (
            f"{cls.__name__}: {sorted(always - set(HASHED_ALWAYS[cls.__name__]))} added without new_key(): "
            "it would change every existing cell id")


def test_a_new_key_at_its_default_leaves_the_serialized_settings_alone():
    class Before(StrictModel):
        n_ctx: int = 512

    class After(StrictModel):
        n_ctx: int = 512
        allow_overflow: bool = new_key(False)

    assert After().model_dump(mode="json") == Before().model_dump(mode="json")
    assert After(allow_overflow=False).model_dump() == {"n_ctx": 512}
    assert After(allow_overflow=True).model_dump() == {"n_ctx": 512, "allow_overflow": True}
    assert After.model_validate(After(allow_overflow=True).model_dump()).allow_overflow is True


def test_unknown_backend_or_task_type_suggests_the_nearest(tmp_path, capsys):
    suite = (REPO / "suites" / "quickstart.yaml").read_text().replace("type: llamacpp", "type: llamacp", 1)
    path = tmp_path / "q.yaml"
    path.write_text(suite)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "backends.gguf-cpu.type: expected one of" in err and "did you mean 'llamacpp'?" in err
    assert "did you mean 'perplexity'?" in TASKS.unknown("perplexty")
    assert "did you mean" not in BACKENDS.unknown("zzz")


@pytest.fixture()
def legacy_run(tmp_path) -> Path:
    """A copy of a run directory written by the harness before results were versioned (schema 0)."""
    run = tmp_path / "run"
    shutil.copytree(DATA / "run-schema0", run)
    return run


def test_a_schema_0_run_resumes_without_recomputing(legacy_run, capsys):
    before = {r.cell_id: r for r in read_cell_records(legacy_run)}
    assert before and all(r.schema == SCHEMA for r in before.values())  # read as the current version
    assert main(["run", str(DATA / "legacy.yaml"), "--out", str(legacy_run), "--resume"]) == 0
    assert "0 cells ran, 4 reused" in capsys.readouterr().out
    info = json.loads((legacy_run / "run.json").read_text())
    assert info["schema"] == SCHEMA and info["started_at"].startswith("2026-12-02")
    assert {r.cell_id: r.measurements for r in read_cell_records(legacy_run)} == {
        k: r.measurements for k, r in before.items()}


def test_a_schema_0_run_compares_and_reports(legacy_run, tmp_path, capsys):
    assert main(["compare", str(DATA / "run-schema0"), str(legacy_run)]) == 0
    assert "No regression." in capsys.readouterr().out
    assert main(["report", str(legacy_run), "--out", str(tmp_path / "report")]) == 0
    assert "token ppl" in (tmp_path / "report" / "report.md").read_text()


def test_a_newer_schema_is_refused_by_every_reader(legacy_run, capsys):
    info = json.loads((legacy_run / "run.json").read_text())
    (legacy_run / "run.json").write_text(json.dumps({**info, "schema": SCHEMA + 1}))
    with pytest.raises(UserError, match=f"newer harness \\(results schema {SCHEMA + 1}"):
        read_run(legacy_run)
    for argv in (["compare", str(DATA / "run-schema0"), str(legacy_run)], ["report", str(legacy_run)],
                 ["history", str(legacy_run)],
                 ["run", str(DATA / "legacy.yaml"), "--out", str(legacy_run), "--resume"]):
        assert main(argv) == 2, argv
        assert "upgrade harness" in capsys.readouterr().err
    cell = next((legacy_run / "cells").glob("*.json"))
    (legacy_run / "run.json").write_text(json.dumps(info))
    cell.write_text(json.dumps({**json.loads(cell.read_text()), "schema": SCHEMA + 1}))
    assert main(["run", str(DATA / "legacy.yaml"), "--out", str(legacy_run), "--resume"]) == 2
    assert f"{cell.name}: written by a newer harness" in capsys.readouterr().err


def test_written_files_carry_the_schema(legacy_run):
    assert main(["run", str(DATA / "legacy.yaml"), "--out", str(legacy_run), "--resume", "--only", "*/ppl"]) == 0
    assert json.loads((legacy_run / "run.json").read_text())["schema"] == SCHEMA
    table = pd.read_parquet(legacy_run / "results.parquet")
    assert set(table.status) == {"ok"}
