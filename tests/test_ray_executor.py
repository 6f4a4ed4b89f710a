"""The Ray executor on a two-node cluster on this machine (127.0.0.1 only; each node labelled as a machine
of its own, fake-a and fake-b), with n-gram cells on the built-in corpus (seconds each): the same quality
numbers as the local executor, timing cells never beside each other on one machine, a killed Ray worker or
a removed node retried elsewhere, Ctrl-C leaves no worker process behind and a resumed run, with either
executor, recomputes only what is missing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import REPO, SMOLLM2_PKG

from harness.cli import main
from harness.results.records import read_cell_records, read_record

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray", reason="the Ray executor's tests need the ray extra: pip install -e '.[ray]'")

from harness.run.ray_executor import LOOPBACK_SWITCH  # noqa: E402
from harness.run.ray_placement import HOST_LABEL  # noqa: E402

TRAIN = "builtin:stdlib-docs#train"
QUALITY = ("token_ppl", "nll_mean", "bits_per_byte", "word_ppl", "tokens_scored", "bytes_scored", "model_bytes")


def node_args(host: str) -> dict:
    return {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 80 * 2**20,
            "include_dashboard": False, "labels": {HOST_LABEL: host}}


@pytest.fixture(scope="module")
def cluster():
    """Two one-CPU nodes on 127.0.0.1, as two machines; Ray's files in a short folder of their own (Unix
    socket paths must stay under 107 bytes)."""
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(LOOPBACK_SWITCH, "0")
        mp.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="hr-"))
        mp.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        cluster = Cluster(initialize_head=True, head_node_args=node_args("fake-a"))
        cluster.add_node(**node_args("fake-b"))
        yield cluster
        cluster.shutdown()


def suite(tmp_path: Path, orders: list[int], tasks: list[str], name: str = "rayng", **extra) -> Path:
    models = {f"w{n}": {"ngram": {"order": n, "train": TRAIN}} for n in orders}
    spec = {"name": name, "models": models, "backends": {"ngram": {"type": "ngram"}},
            "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}},
            "tasks": {"ppl": {"type": "perplexity", "dataset": "docs", "window": "rolling", "n_ctx": 256,
                              "max_tokens": 2048},
                      "speed": {"type": "throughput", "dataset": "docs", "prompt_tokens": 32, "new_tokens": 8,
                                "repeats": 2, "warmup": 0, "interleave": True}},
            "matrix": [{"model": list(models), "backend": "ngram", "task": tasks}]}
    for key, value in extra.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and key in spec else value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def records(run: Path) -> dict:
    return {r.cell_id: r for r in read_cell_records(run)}


def node_hosts(cluster) -> dict[str, str]:
    return {n["NodeID"]: n["Labels"][HOST_LABEL] for n in cluster.global_state.node_table() if n["Alive"]}


def test_quality_equals_the_local_executors_and_timing_cells_keep_apart(cluster, tmp_path, capsys):
    path = suite(tmp_path, [2, 3], ["ppl", "speed"])
    on_ray, local = tmp_path / "ray", tmp_path / "local"
    assert main(["run", str(path), "--executor", "ray", "--address", cluster.address, "--out", str(on_ray)]) == 0
    out = capsys.readouterr().out
    assert "ray: 2 nodes on 2 machines (fake-a, fake-b)" in out and " @fake-" in out  # the progress bar's cells
    assert main(["run", str(path), "--out", str(local)]) == 0
    by_ray, by_local = records(on_ray), records(local)
    assert by_ray.keys() == by_local.keys() and len(by_ray) == 4
    hosts = node_hosts(cluster)
    for cell_id, record in by_ray.items():
        where = record.resolved["where"]
        assert where["ray_node_id"] in hosts and where["host"] == hosts[where["ray_node_id"]]
        assert where["hostname"] == by_local[cell_id].resolved["where"]["hostname"]
        assert "ray_node_id" not in by_local[cell_id].resolved["where"]
        if record.cell["task"] == "ppl":  # identical numbers, window by window
            assert record.samples == by_local[cell_id].samples
            values = {m["metric"]: m["value"] for m in record.measurements if m["metric"] in QUALITY}
            assert values == {m["metric"]: m["value"] for m in by_local[cell_id].measurements
                              if m["metric"] in QUALITY} and len(values) == len(QUALITY)
    assert json.loads((on_ray / "run.json").read_text())["executor"]["type"] == "ray"

    # each timing cell's rounds ran on one node; no two timing processes overlapped on one machine
    timing = [read_record(p) for p in (on_ray / "cells").glob("*.round*.json")]
    assert len(timing) == 4
    for cell_id in {r.cell_id for r in timing}:
        assert len({r.resolved["where"]["ray_node_id"] for r in timing if r.cell_id == cell_id}) == 1
    for host in {r.resolved["where"]["host"] for r in timing}:
        spans = sorted((r.resolved["where"]["process_started_at"], r.resolved["where"]["process_ended_at"])
                       for r in timing if r.resolved["where"]["host"] == host)
        assert all(end <= next_start for (_, end), (next_start, _) in pairwise(spans)), spans
    # both timing cells started at once, so the driver gave them a machine each
    assert {r.resolved["where"]["host"] for r in timing} == {"fake-a", "fake-b"}

    assert main(["compare", str(local), str(on_ray), "--format", "json", "--out", str(tmp_path / "c.json")]) == 0
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert all(r["note"] == "" for r in rows), [r["note"] for r in rows if r["note"]]
    capsys.readouterr()
    assert main(["run", str(path), "--executor", "ray", "--address", cluster.address, "--out", str(on_ray),
                 "--resume"]) == 0
    assert "0 cells ran, 4 reused" in capsys.readouterr().out


def test_a_request_no_node_can_meet_is_bad_input_before_anything_runs(cluster, tmp_path, capsys):
    path = suite(tmp_path, [2], ["ppl"], executor={"type": "ray", "address": cluster.address},
                 models={"smol": {"gguf": SMOLLM2_PKG}}, backends={"gguf": {"type": "llamacpp", "n_threads": 4}},
                 matrix=[{"model": "w2", "backend": "ngram", "task": "ppl"},
                         {"model": "smol", "backend": "gguf", "task": "ppl"}])
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"harness: error: {path}: backends.gguf: cell smol/gguf/ppl needs 4 CPUs; no node of the Ray cluster has "
        "that (2 nodes, the largest 1 CPUs and 0 GPUs)\n")
    assert not out.exists()  # refused before the run folder is made


def _driver(path: Path, out: Path, address: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "harness", "run", str(path), "--out", str(out), *extra,
                             "--executor", "ray", "--address", address], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _workers(cluster) -> list[psutil.Process]:
    """The cells' worker processes the cluster's Ray workers run now."""
    raylets = [psutil.Process(n.all_processes["raylet"][0].process.pid)
               for n in [cluster.head_node, *cluster.worker_nodes] if n.all_processes.get("raylet")]
    return [p for r in raylets for p in r.children(recursive=True) if "harness.run.worker" in " ".join(p.cmdline())]


def _wait_for_workers(cluster, driver: subprocess.Popen, n: int = 1) -> list[psutil.Process]:
    while driver.poll() is None:
        try:
            found = _workers(cluster)
        except psutil.Error:  # a process ended while being looked at
            continue
        if len(found) >= n:
            return found
        time.sleep(0.1)
    pytest.fail(f"the run ended before {n} cells ran at once: {driver.stdout.read()}")


def _hold_workers(cluster, driver: subprocess.Popen, n: int) -> list[psutil.Process]:
    """Stop (SIGSTOP) each cell's worker as it starts until n are held, so n cells run at once however fast a
    cell is or however late the others start on a loaded machine; ``_release`` lets them go on."""
    held: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + 180
    while len(held) < n:
        if time.monotonic() > deadline:  # a cell ended before it was held: the others would wait forever
            _release(list(held.values()))
            pytest.fail(f"only {len(held)} of {n} cells' workers were held at once")
        for worker in _wait_for_workers(cluster, driver):
            if worker.pid not in held:
                try:
                    worker.suspend()
                except psutil.NoSuchProcess:  # it ended before it could be held
                    continue
                held[worker.pid] = worker
        time.sleep(0.05)
    return list(held.values())


def _release(workers: list[psutil.Process]) -> None:
    for worker in workers:
        try:
            worker.resume()
        except psutil.NoSuchProcess:
            pass


def _host_of(worker: psutil.Process, cluster) -> str:
    raylet = worker.parent().parent().pid
    node = next(n for n in [cluster.head_node, *cluster.worker_nodes] if n.all_processes["raylet"][0].process.pid
                == raylet)
    return node_hosts(cluster)[node.node_id]


def test_a_killed_ray_worker_is_retried_on_the_other_node(cluster, tmp_path):
    driver = _driver(suite(tmp_path, [2, 3, 4], ["ppl"]), tmp_path / "run", cluster.address)
    worker = _wait_for_workers(cluster, driver)[0]
    host = _host_of(worker, cluster)
    worker.parent().send_signal(signal.SIGKILL)  # the Ray worker running the task, not the cell's process
    out, _ = driver.communicate(timeout=300)
    assert not psutil.pid_exists(worker.pid) or worker.status() == psutil.STATUS_ZOMBIE
    by_id = records(tmp_path / "run")
    assert len(by_id) == 3, out
    retried = [r for r in by_id.values() if "retried_after" in r.resolved["where"]]
    assert len(retried) == 1 and retried[0].resolved["where"]["retried_after"] == f"WorkerCrashedError on {host}"
    if retried[0].ok:  # elsewhere
        assert retried[0].resolved["where"]["host"] != host and driver.returncode == 0
    else:  # killed again: failed, with the class of the Ray error
        assert "WorkerCrashedError" in retried[0].reason and driver.returncode == 3
    assert all(r.ok for r in by_id.values() if r is not retried[0]), out


def test_a_removed_node_ends_in_a_retried_cell_and_the_others_are_kept(cluster, tmp_path):
    third = cluster.add_node(**node_args("fake-c"))
    path = suite(tmp_path, [2, 3, 4], ["ppl"], executor={"type": "ray", "exclusive": "all"})  # one per machine
    driver = _driver(path, tmp_path / "run", cluster.address)
    workers = _hold_workers(cluster, driver, 3)
    on_third = next(w for w in workers if _host_of(w, cluster) == "fake-c")
    cluster.remove_node(third, allow_graceful=False)
    _release(workers)
    out, _ = driver.communicate(timeout=300)
    by_id = records(tmp_path / "run")
    assert len(by_id) == 3, out
    retried = [r for r in by_id.values() if "retried_after" in r.resolved["where"]]
    assert len(retried) == 1 and retried[0].resolved["where"]["retried_after"].endswith(" on fake-c"), out
    assert retried[0].ok and retried[0].resolved["where"]["host"] in ("fake-a", "fake-b"), out
    assert all(r.ok for r in by_id.values()) and driver.returncode == 0, out
    assert not psutil.pid_exists(on_third.pid) or on_third.status() == psutil.STATUS_ZOMBIE


def test_ctrl_c_leaves_no_worker_and_resume_recomputes_only_what_is_missing(cluster, tmp_path, capsys):
    path, out = suite(tmp_path, [2, 3, 4], ["ppl", "speed"]), tmp_path / "run"
    driver = _driver(path, out, cluster.address)
    while driver.poll() is None and not list((out / "cells").glob("*.json")):
        time.sleep(0.1)  # at least one cell finished
    running = _wait_for_workers(cluster, driver)
    driver.send_signal(signal.SIGINT)
    text, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, text
    time.sleep(1)
    assert not [w for w in running if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    assert not _workers(cluster), "a worker outlived its cancelled Ray task"
    kept = {r.cell_id: r for r in read_cell_records(out) if r.ok}
    assert 1 <= len(kept) < 6
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}

    assert main(["run", str(path), "--out", str(out), "--resume", "--executor", "local"]) == 0
    summary = capsys.readouterr().out
    assert f"{6 - len(kept)} cells ran, {len(kept)} reused" in summary, summary
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if read_record(p).ok)
    assert len([r for r in read_cell_records(out) if r.ok]) == 6


@pytest.mark.cluster
def test_a_private_cluster_keeps_its_files_under_the_cache_and_stops_with_the_run(tmp_path, monkeypatch):
    """No --address: the run starts a cluster of its own on this machine and stops it at the end."""
    cache = Path(tempfile.mkdtemp(prefix="hc-"))  # short enough for Ray's socket paths under it
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    path, out = suite(tmp_path, [2], ["ppl", "speed"]), tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--out", str(out), "--executor", "ray"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    info = json.loads((out / "run.json").read_text())["executor"]
    assert info["address"] == "private" and len(info["nodes"]) == 1
    sessions = [p for p in (cache / "ray").glob("session_*") if not p.is_symlink()]
    assert len(sessions) == 1
    left = [p for p in psutil.process_iter(["cmdline"]) if str(sessions[0]) in " ".join(p.info["cmdline"] or [])]
    assert not left, [p.info["cmdline"][:2] for p in left]
    assert all(r.ok for r in read_cell_records(out)) and len(read_cell_records(out)) == 2


@pytest.mark.cluster
@pytest.mark.integration
def test_smollm2_through_ray_equals_the_local_executor(cluster, tmp_path):
    path = suite(tmp_path, [3], ["ppl", "speed"], models={"smol": {"gguf": SMOLLM2_PKG}},
                 backends={"gguf": {"type": "llamacpp", "n_threads": 1}},
                 matrix=[{"model": "smol", "backend": "gguf", "task": ["ppl", "speed"]},
                         {"model": "w3", "backend": "ngram", "task": ["ppl", "speed"]}])
    on_ray, local = tmp_path / "ray", tmp_path / "local"
    assert main(["run", str(path), "--executor", "ray", "--address", cluster.address, "--out", str(on_ray)]) == 0
    assert main(["run", str(path), "--out", str(local)]) == 0
    by_ray, by_local = records(on_ray), records(local)
    assert by_ray.keys() == by_local.keys() and len(by_ray) == 4
    for cell_id, record in by_ray.items():
        if record.cell["task"] == "ppl":  # llama.cpp on one thread: the same logits, window by window
            assert record.samples == by_local[cell_id].samples


@pytest.mark.cluster
def test_an_address_where_nothing_listens_fails_in_one_line_within_the_default_connect_timeout(tmp_path):
    """Ray alone retries for a quarter of an hour (20 tries of ~40 s); the default gives up after 60 s."""
    path = suite(tmp_path, [2], ["ppl"])
    driver = _driver(path, tmp_path / "run", "127.0.0.1:1")
    out, _ = driver.communicate(timeout=300)
    assert driver.returncode == 4, out
    assert out.splitlines()[-1] == ("harness: error: Ray cluster at 127.0.0.1:1: nothing answered within 60 s "
                                    "(executor.connect_timeout_s): connection refused (ECONNREFUSED)"), out


@pytest.mark.cluster
def test_sigterm_stops_a_ray_run_as_it_stops_a_local_one(cluster, tmp_path):
    """ray.init puts in a SIGTERM handler of its own (sys.exit, then a C++ stack dump); ours must stay."""
    out = tmp_path / "run"
    driver = _driver(suite(tmp_path, [2, 3, 4], ["ppl"]), out, cluster.address)
    running = _wait_for_workers(cluster, driver)
    driver.send_signal(signal.SIGTERM)
    text, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, text
    assert text.splitlines()[-1] == "harness: interrupted by SIGTERM; finished cells are kept (resume with --resume)"
    assert "SIGTERM received" not in text, text
    assert json.loads((out / "run.json").read_text())["ended_at"]
    time.sleep(1)
    assert not [w for w in running if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


def _private_driver(path: Path, out: Path, cache: Path) -> subprocess.Popen:
    """``harness run --executor ray`` on a private cluster of its own, Ray's files under ``cache``."""
    env = {**os.environ, "HARNESS_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "harness", "run", str(path), "--out", str(out), "--executor", "ray"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _descendants(driver: subprocess.Popen, name: str) -> list[psutil.Process]:
    """The driver's descendant processes named ``name``, or running that module (python -m)."""
    found = []
    for p in psutil.Process(driver.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.name() == name or name in p.cmdline():
                found.append(p)
    return found


@pytest.mark.cluster
@pytest.mark.parametrize("victim", ["gcs_server", "raylet"])
def test_a_lost_cluster_fails_the_cells_it_held_and_the_run_ends_in_order(victim, tmp_path):
    """The head's GCS or raylet killed mid-run: Ray would end the driver (exit 1, no record for the cells it
    held); every cell gets a record instead, those held failed with the reason, exit 3, ended_at written."""
    cache = Path(tempfile.mkdtemp(prefix="hc-"))  # short enough for Ray's socket paths under it
    path, out = suite(tmp_path, [2, 3, 4], ["ppl"]), tmp_path / "run"
    driver = _private_driver(path, out, cache)
    while driver.poll() is None and not (workers := _descendants(driver, "harness.run.worker")):
        time.sleep(0.1)
    [process] = _descendants(driver, victim)
    process.kill()
    text, _ = driver.communicate(timeout=300)
    assert driver.returncode == 3, text
    by_id = records(out)
    assert len(by_id) == 3, text
    lost = [r for r in by_id.values() if not r.ok]
    assert lost and all(r.reason.startswith("Ray cluster lost: ") for r in lost), [r.reason for r in lost]
    assert json.loads((out / "run.json").read_text())["ended_at"]
    time.sleep(1)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.cluster
def test_a_killed_driver_leaves_no_process_of_its_private_cluster(tmp_path):
    """kill -9 of the harness: the GCS and raylet die with it (Ray's PR_SET_PDEATHSIG), the harness's reaper
    takes the rest (Ray's agents would wait ~60 s on the dead GCS first)."""
    cache = Path(tempfile.mkdtemp(prefix="hc-"))
    driver = _private_driver(suite(tmp_path, [2, 3, 4], ["ppl"]), tmp_path / "run", cache)
    while driver.poll() is None and not _descendants(driver, "harness.run.worker"):
        time.sleep(0.1)
    cluster = psutil.Process(driver.pid).children(recursive=True)
    assert any(p.name() == "ray::DashboardAgent" for p in cluster)  # the slowest to go
    driver.kill()
    driver.communicate(timeout=60)

    def left() -> list[str]:
        names = []
        for p in cluster:
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    names.append(p.name())
        return names

    deadline = time.monotonic() + 30  # without the reaper the agents stay for more than 60 s
    while left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left()
