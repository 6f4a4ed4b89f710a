"""Cache entries (harness.sources.cache_entry) shared by processes started together: built once, published
whole, rebuilt when damaged, never left half-built by a killed builder. The concurrent cases use real
processes that meet on the real file lock."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from harness.sources.cache_entry import Stale, cached

#: a process that builds one entry (a file, or with "dir" a folder of two files): its build writes half of it,
#: logs a line to BUILDS, waits for GO, then writes the rest; it prints what the check read back
BUILDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from harness.sources.cache_entry import cached

    entry, builds, go, kind = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]

    def build(tmp):
        if kind == "dir":
            tmp.mkdir()
            (tmp / "a").write_text("built")
        else:
            tmp.write_text("built")
        with open(builds, "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        while not go.exists():
            time.sleep(0.01)
        if kind == "dir":
            (tmp / "b").write_text("whole")
        else:
            tmp.write_text("built whole")

    def check(path):
        text = " ".join((path / n).read_text() for n in "ab") if kind == "dir" else path.read_text()
        if text != "built whole":
            raise ValueError(f"{path} holds {text!r}")
        return text

    print(cached(entry, build, check).value, flush=True)
""")


def start_builder(tmp_path: Path, kind: str, name: str) -> subprocess.Popen:
    with open(tmp_path / f"{name}.err", "w") as err:
        return subprocess.Popen([sys.executable, "-c", BUILDER, str(tmp_path / "cache" / "entry"),
                                 str(tmp_path / "builds"), str(tmp_path / "go"), kind], stdout=subprocess.PIPE,
                                stderr=err, text=True)


def wait_for(condition, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def builds(tmp_path: Path) -> list[str]:
    path = tmp_path / "builds"
    return path.read_text().split() if path.exists() else []


def temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_two_processes_building_one_entry_build_it_once_and_both_use_it(tmp_path, kind):
    first = start_builder(tmp_path, kind, "first")
    wait_for(lambda: builds(tmp_path), "the first process to start building")
    assert not (tmp_path / "cache" / "entry").exists()  # half built: not published
    second = start_builder(tmp_path, kind, "second")
    wait_for(lambda: "waiting for another process" in (tmp_path / "second.err").read_text(),
             "the second process to wait on the lock")
    (tmp_path / "go").touch()
    outputs = [p.communicate(timeout=60)[0].strip() for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], (tmp_path / "second.err").read_text()
    assert outputs == ["built whole", "built whole"]
    assert builds(tmp_path) == [str(first.pid)]  # built once, by the first; the second reused it
    assert temps(tmp_path / "cache") == []


def test_a_builder_killed_midway_leaves_no_entry_and_the_next_run_builds_it(tmp_path):
    killed = start_builder(tmp_path, "file", "killed")
    wait_for(lambda: builds(tmp_path), "the build to start")
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    cache = tmp_path / "cache"
    assert not (cache / "entry").exists() and len(temps(cache)) == 1  # its half-written temp file
    calls = []
    entry = cached(cache / "entry", lambda tmp: calls.append(tmp.write_text("new")), Path.read_text)
    assert entry.value == "new" and entry.build_s is not None and len(calls) == 1  # its lock died with it
    assert temps(cache) == []


def test_a_damaged_entry_is_rebuilt_with_one_line_naming_it(tmp_path, capsys):
    path = tmp_path / "model.npz"

    def check(p: Path) -> str:
        if not p.read_text().endswith("END"):
            raise ValueError("truncated")
        return p.read_text()

    calls = []
    cached(path, lambda tmp: calls.append(tmp.write_text("weights END")), check)
    path.write_text("weig")  # truncated, as by a full disk or a copy cut short
    entry = cached(path, lambda tmp: calls.append(tmp.write_text("weights END")), check)
    assert entry.value == "weights END" and len(calls) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"harness: cache entry {path} is damaged (ValueError: truncated); rebuilding it"]
    assert cached(path, lambda tmp: calls.append(None), check).build_s is None and len(calls) == 2


def write_model_dir(tmp: Path) -> None:
    tmp.mkdir()
    (tmp / "config.json").write_text("{}")
    (tmp / "weights").write_text("w")


def test_a_damaged_directory_entry_is_replaced_whole(tmp_path, capsys):
    path = tmp_path / "hf-dir"
    path.mkdir()
    (path / "config.json").write_text("{}")  # a folder without its weights
    (path / "stray").write_text("x")
    entry = cached(path, write_model_dir, lambda p: (p / "weights").read_text())
    assert entry.value == "w" and sorted(p.name for p in path.iterdir()) == ["config.json", "weights"]
    assert "is damaged (FileNotFoundError" in capsys.readouterr().err
    assert temps(tmp_path) == []


def test_a_failed_build_publishes_nothing(tmp_path):
    path = tmp_path / "entry"

    def crash(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left") as raised:
        cached(path, crash, Path.read_text)
    assert raised.value.filename == str(path)  # the entry, not its temp file

    def crash_in_a_folder(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "model.safetensors").write_text("half")
        raise OSError(28, "No space left on device", str(tmp / "model.safetensors"))

    with pytest.raises(OSError) as raised:
        cached(path, crash_in_a_folder, Path.read_text)
    assert raised.value.filename == str(path / "model.safetensors")
    with pytest.raises(RuntimeError, match=f"{path} was built but fails its check .FileNotFoundError"):
        cached(path, lambda tmp: tmp.mkdir(), lambda p: (p / "config.json").read_text())
    with pytest.raises(RuntimeError, match=f"building {path} wrote nothing"):
        cached(path, lambda tmp: None, Path.read_text)
    assert not path.exists() and temps(tmp_path) == []


def test_a_stale_entry_is_rebuilt_without_a_damage_line(tmp_path, capsys):
    path = tmp_path / "probe.json"
    cached(path, lambda tmp: tmp.write_text("old"), Path.read_text)

    def fresh(p: Path) -> str:
        if p.read_text() == "old":
            raise Stale
        return p.read_text()

    assert cached(path, lambda tmp: tmp.write_text("new"), fresh).value == "new"
    assert cached(path, lambda tmp: tmp.write_text("newer"), fresh, refresh=True).value == "newer"
    assert capsys.readouterr().err == ""


def test_a_converted_model_folder_with_truncated_weights_fails_its_check(tmp_path):
    """What makes the GGUF -> HF conversion's entry be rebuilt: weights cut short, a missing record."""
    save_file = pytest.importorskip("safetensors.numpy").save_file
    from harness.core.errors import UserError
    from harness.core.files import Damaged
    from harness.sources.gguf_to_hf import TOKENIZER_RECORD, check_materialized

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / TOKENIZER_RECORD).write_text("{}")
    weights = tmp_path / "model.safetensors"
    save_file({"w": np.arange(64, dtype=np.float32)}, str(weights))
    check_materialized(tmp_path)
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(Damaged, match=r"model.safetensors: its tensors need .* bytes, the file has"):
        check_materialized(tmp_path)
    (tmp_path / TOKENIZER_RECORD).unlink()
    with pytest.raises(UserError, match=f"{TOKENIZER_RECORD}: cannot read"):
        check_materialized(tmp_path)
