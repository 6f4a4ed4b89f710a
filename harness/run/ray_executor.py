"""The Ray executor: every job as one Ray task on a cluster; the driver (``harness run``) keeps the run
directory and writes each record, log and artifact as its task returns them.

A task starts today's worker process on its node (crash containment and per-cell memory as on one
machine), in a temporary directory, with the corpus texts the driver read (no filesystem is shared) and
the job's models located again on the node and checked against the driver's sha256. It yields twice: where
it started (the progress bar shows cells on several nodes at once), then how the worker ended.

Scheduling. A cell asks for its backend's CPU threads and a GPU when it runs on CUDA; Ray packs such cells
as they fit. A cell that must not share its machine (``exclusive``: throughput cells, cells whose backend
threads are unset, or every cell when the suite says so) is placed by the driver instead: on a node of a
machine no other exclusive cell runs on (machines are keyed by hostname, or a node's ``harness-host``
label, not by Ray node: several nodes can share one host), asking for all of that node's CPUs. The rounds
of an interleaved cell stay on the node its first round ran on. A request no node can meet is bad input
before anything runs (Ray would keep it pending forever).

Faults. A worker that crashes or times out is recorded as on one machine. A task whose Ray worker or node
dies is retried once, on another node where one can run it, then recorded ``failed`` with the Ray error's
class. A lost cluster (its GCS silent, or the raylet on the driver's machine dead) ends every job the driver
holds ``failed`` before Ray ends the driver's process. Ctrl-C, SIGTERM and SIGHUP cancel what is queued and
kill what runs: the worker process dies with its Ray task (``PR_SET_PDEATHSIG``). What a private cluster
leaves when the driver is killed, a reaper process kills.

This module is the driver; :mod:`harness.run.ray_placement` says what a cell asks of a node, :mod:`harness.run.ray_node`
is what runs there."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from rich.console import Console

from harness.core.errors import UserError, located, require
from harness.core.files import atomic_write_text
from harness.core.process import Interrupted
from harness.results.records import FAILED, CellRecord
from harness.run.executor import Executor, Finished, how_it_ended, job_label, record_without_worker
from harness.run.job import Job
from harness.run.plan import Plan, models_needed
from harness.run.ray_node import code_fingerprint, run_on_node
from harness.run.ray_placement import Demand, Node, alive_nodes, demand
from harness.sources.cache import cache_dir
from harness.sources.corpora import DatasetSpec, load_corpus
from harness.suite.cells import Cell
from harness.suite.executor import ExecutorSettings
from harness.suite.schema import Suite

#: Ray binds its servers to every interface and reaches a cluster through the machine's outward address
#: unless it believes multi-node clusters are off, the switch it uses on laptops (read once, at import)
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: the smallest object store Ray accepts, and the room a run needs beside the texts it ships: the records,
#: logs and artifacts on their way back
OBJECT_STORE_MIN, OBJECT_STORE_ROOM = 75 * 2**20, 128 * 2**20
#: a Unix socket path holds 107 bytes; Ray's session folder adds this much to its temporary folder
SOCKET_PATH_MAX, SESSION_SOCKET_SUFFIX = 107, 66
#: the Ray errors of a worker or node that died under a task: the cell itself is not to blame
RETRIED = ("WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OutOfMemoryError")
#: how long the driver waits for the cluster's GCS to answer before it counts the cluster as lost (Ray ends
#: the driver's process 60 s after it lost its GCS: what the driver holds must be recorded before that)
GCS_CHECK_S = 5.0
#: how often the driver looks at the cluster while nothing returns (a node that left, a job it can place)
POLL_S = 5.0
#: the signals the harness stops on in order (:func:`harness.core.process.interrupt`)
INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: how many times ``ray.init`` tries to reach a cluster's GCS (Ray's default: 20, ~40 s each where none answers)
RAY_CONNECT_TRIES = "RAY_gcs_server_port_wait_time_s"


class ClusterLost(Exception):
    """The driver lost the cluster: its GCS does not answer, or the raylet on the driver's machine died
    (Ray ends a driver that submits to a dead raylet). Every job held ends failed; none is sent again."""


@dataclass
class _Flight:
    """A job the driver holds: waiting for a machine, queued in Ray, or running on a node."""

    job: Job
    demand: Demand
    #: the task's ObjectRefGenerator; None until the job is handed to Ray
    ref: object = None
    #: where the driver placed it (None: wherever Ray puts it)
    target: Node | None = None
    #: where it started (the task's first report)
    node: Node | None = None
    where: dict = field(default_factory=dict)
    #: a node not to run on again (its first attempt died there)
    avoid: str | None = None
    #: the Ray error of the first attempt, once retried
    retried_after: str | None = None


class RayExecutor(Executor):
    #: every job of a phase at once: Ray queues what it cannot place yet, Ctrl-C cancels the queue
    capacity = sys.maxsize

    def __init__(self, run_dir: Path, timeout_s: float, settings: ExecutorSettings, suite: Suite, suite_path: Path,
                 cells: list[Cell], plan: Plan, corpora: Path | None, console: Console):
        self.run_dir, self.timeout_s, self.settings, self.console = run_dir, timeout_s, settings, console
        self.base_dir = suite_path.resolve().parent
        self.demands = {c.cell_id: demand(c, settings.exclusive) for c in cells}
        self._specs = {name: suite.models[name].model_dump(mode="json") for name in models_needed(suite, cells)}
        texts = shipped_texts(cells, plan, self.base_dir, corpora)
        self._flights: list[_Flight] = []
        self._busy: dict[str, _Flight] = {}  # machine -> the exclusive job on it
        self._pins: dict[str, str] = {}  # cell id -> the node its rounds run on
        self._nodes: dict[str, Node] = {}
        self._ray = None
        #: kills what is left of a private cluster once this process is gone
        self._reaper: subprocess.Popen | None = None
        #: jobs that ended while being submitted (no node can run them any more, the cluster was lost)
        self._ended_early: list[Finished] = []
        #: why the cluster is lost, once it is: "Ray cluster lost: ..."
        self._lost: str | None = None
        #: the node of this machine and its raylet's address: Ray ends a driver that touches a dead raylet
        self._own_node: str | None = None
        self._own_raylet: tuple[str, int] | None = None
        self._switch = (os.environ.get(LOOPBACK_SWITCH), None)
        try:
            self._ray = self._connect(sum(len(t) for t in texts.values()))
            self._refresh()
            self._check(cells, suite_path)
            self._texts = {source: self._ray.put(text) for source, text in texts.items()}
        except BaseException:
            self.close()
            raise
        self._task = self._ray.remote(max_retries=0)(run_on_node)  # retried here, on another node
        own = next(n for n in self._ray.nodes() if n["NodeID"] == self._ray.get_runtime_context().get_node_id())
        self._own_node, self._own_raylet = own["NodeID"], (own["NodeManagerAddress"], own["NodeManagerPort"])
        hosts = sorted({n.host for n in self._nodes.values()})
        console.print(f"ray: {len(self._nodes)} node{'s' * (len(self._nodes) != 1)} on {len(hosts)} "
                      f"machine{'s' * (len(hosts) != 1)} ({', '.join(hosts)}), "
                      f"{sum(n.cpus for n in self._nodes.values())} CPUs, "
                      f"{sum(n.gpus for n in self._nodes.values())} GPUs", highlight=False)

    # --- the cluster ---------------------------------------------------------------------------------------

    def _connect(self, text_bytes: int):
        """Join the cluster at the settings' address, or start a private one on this machine (127.0.0.1
        only, temporary files under the cache, the object store capped to what the run ships). Our
        interrupt handlers stay: ``ray.init`` puts in one of its own for SIGTERM (``sys.exit``), which would
        skip the orderly stop (exit 130, finished cells kept, ``ended_at`` written)."""
        address = self.settings.address
        private = address is None
        loopback = private or address.rsplit(":", 1)[0].strip("[]") in ("localhost", "::1") or address.startswith(
            "127.")
        if loopback:
            os.environ[LOOPBACK_SWITCH] = "0"
        ray = require("ray", "ray", "--executor ray")
        if loopback:
            from ray._private import ray_constants

            self._switch = (self._switch[0], ray_constants.ENABLE_RAY_CLUSTER)
            ray_constants.ENABLE_RAY_CLUSTER = False
        quiet = {"log_to_driver": False, "logging_level": "error"}
        handlers = {s: signal.getsignal(s) for s in INTERRUPTS} if in_main_thread() else {}
        try:
            if private:
                store = max(OBJECT_STORE_MIN, text_bytes + OBJECT_STORE_ROOM)
                before = set(psutil.Process().children(recursive=True))
                ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                         _temp_dir=str(ray_temp_dir()), object_store_memory=store, **quiet)
                self._reaper = reaper([p for p in psutil.Process().children(recursive=True) if p not in before])
            else:
                self._join(ray, address, quiet)
        except SystemExit as exc:  # Ray's SIGTERM handler, while ray.init ran
            if exc.code == signal.SIGTERM:
                raise Interrupted(signal.SIGTERM) from None
            raise
        finally:
            for signum, handler in handlers.items():
                if handler is not None:  # None: not set from Python, nothing to put back
                    signal.signal(signum, handler)
        return ray

    def _join(self, ray, address: str, quiet: dict) -> None:
        """``ray.init`` at an address, once something answers there within the connect timeout (Ray itself
        would try 20 times, ~40 s each, where nothing listens), and then with one try of Ray's own."""
        from ray._private.services import canonicalize_bootstrap_address

        try:
            gcs = canonicalize_bootstrap_address(address)  # auto: where `ray start` left its address
            host, port = gcs.rsplit(":", 1)
            wait_for_listener(host.strip("[]"), int(port), self.settings.connect_timeout_s,
                              f"Ray cluster at {address}")
            tries = os.environ.get(RAY_CONNECT_TRIES)
            os.environ[RAY_CONNECT_TRIES] = tries or "1"
            try:
                ray.init(address=address, **quiet)
            finally:
                if tries is None:
                    os.environ.pop(RAY_CONNECT_TRIES, None)
        except (ConnectionError, RuntimeError, ValueError) as exc:  # ConnectionRefusedError is ours: exit 4
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise UserError(f"--address {address}: cannot join a Ray cluster there "
                            f"({first_line(exc) or type(exc).__name__})") from None

    def _refresh(self) -> None:
        self._check_cluster()
        self._nodes = {n.id: n for n in alive_nodes(self._ray)}

    def _check_cluster(self) -> None:
        """Raise ClusterLost when the raylet on this machine refuses connections (it died: Ray ends this
        process as soon as it learns of that, ~15 s later) or the GCS does not answer within GCS_CHECK_S (Ray's
        own calls would wait for it until Ray ends this process)."""
        from ray._private.worker import global_worker
        from ray.exceptions import RayError

        if self._own_raylet is not None:
            try:
                socket.create_connection(self._own_raylet, timeout=GCS_CHECK_S).close()
            except ConnectionRefusedError:
                raise ClusterLost("the raylet on this machine died (nothing listens at "
                                  f"{self._own_raylet[0]}:{self._own_raylet[1]})") from None
        try:
            global_worker.gcs_client.internal_kv_get(b"harness-alive", timeout=GCS_CHECK_S)
        except RayError as exc:
            raise ClusterLost(f"its GCS does not answer ({type(exc).__name__}: {first_line(exc)})") from None

    def _check(self, cells: list[Cell], suite_path: Path) -> None:
        """Every cell fits some node (else Ray would leave it pending for ever): bad input, before any runs."""
        nodes = list(self._nodes.values())
        for cell in cells:
            need = self.demands[cell.cell_id]
            if not any(need.fits(n) for n in nodes):
                largest = (f"{max((n.cpus for n in nodes), default=0)} CPUs and "
                           f"{max((n.gpus for n in nodes), default=0)} GPUs")
                with located(suite_path, f"backends.{cell.backend}"):
                    raise UserError(f"cell {cell.label} needs {need}; no node of the Ray cluster has that "
                                    f"({len(nodes)} nodes, the largest {largest})")

    def describe(self) -> dict:
        return {"type": "ray", "address": self.settings.address or "private", "exclusive": self.settings.exclusive,
                "ray": self._ray.__version__,
                "nodes": [{"id": n.id, "host": n.host, "hostname": n.hostname, "cpus": n.cpus, "gpus": n.gpus}
                          for n in self._nodes.values()]}

    def close(self) -> None:
        """Leave the cluster (a private one stops, even lost) and put Ray's loopback switch back."""
        if self._ray is not None and self._ray.is_initialized():
            self._ray.shutdown()
        if self._reaper is not None:  # it kills whatever of the private cluster is left, then ends
            self._reaper.stdin.close()
            self._reaper.wait()
        env, constant = self._switch
        if env is None:
            os.environ.pop(LOOPBACK_SWITCH, None)
        else:
            os.environ[LOOPBACK_SWITCH] = env
        if constant is not None:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = constant

    # --- jobs ----------------------------------------------------------------------------------------------

    @property
    def running(self) -> list[Job]:
        return [f.job for f in self._flights] + [e.job for e in self._ended_early]

    def status_line(self) -> str:
        started = [f for f in self._flights if f.node is not None]
        several = len({n.host for n in self._nodes.values()}) < len(self._nodes)
        shown = [f"{job_label(f.job)} @{f.node.host}" + (f"/{f.node.id[:6]}" if several else "") for f in started]
        queued = len(self._flights) - len(started)
        return ", ".join(shown) + (f"{'; ' if shown else ''}{queued} queued" if queued else "")

    def submit(self, job: Job) -> None:
        self._flights.append(_Flight(job, self.demands[job.cell_id]))
        self._ended_early += self._unless_lost(self._dispatch)

    def wait_any(self) -> list[Finished]:
        if self._ended_early:
            finished, self._ended_early = self._ended_early, []
            return finished
        return self._unless_lost(self._wait)

    def _unless_lost(self, step) -> list[Finished]:
        """A step that talks to the cluster; once the cluster is lost, every job held ends failed instead."""
        if self._lost is None:
            try:
                return step()
            except ClusterLost as exc:
                self._lost = f"Ray cluster lost: {exc}"
                self.console.print(f"[red]{self._lost}; every cell still held ends failed[/red]", highlight=False)
        return [self._fail(f, self._lost) for f in list(self._flights)]

    def _wait(self) -> list[Finished]:
        ray = self._ray
        self._check_cluster()  # returns keep coming while the GCS is gone, until Ray ends this process
        while True:
            finished = self._dispatch()
            refs = [f.ref for f in self._flights if f.ref is not None]
            if finished or not refs:
                return finished
            ready, _ = ray.wait(refs, num_returns=1, timeout=POLL_S)
            if not ready:
                self._refresh()
                continue
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            changed = False
            for ref in ready:
                flight = next(f for f in self._flights if f.ref is ref)
                outcome = self._next(flight)
                if isinstance(outcome, Finished):
                    finished.append(outcome)
                changed = True
            if finished or changed:
                return finished

    def cancel_all(self) -> None:
        """Cancel what is queued, kill what runs (its worker process dies with it), and wait for both."""
        refs = [f.ref for f in self._flights if f.ref is not None] if self._lost is None else []
        for ref in refs:
            self._ray.cancel(ref, force=True)
        deadline = time.time() + 30
        for ref in refs:
            while time.time() < deadline:
                try:
                    self._ray.get(next(ref), timeout=max(0.1, deadline - time.time()))
                except StopIteration:
                    break
                except Exception:  # cancelled or killed: the task is over
                    break
        self._flights.clear()
        self._busy.clear()

    # --- placing -------------------------------------------------------------------------------------------

    def _dispatch(self) -> list[Finished]:
        """Hand to Ray every waiting job that can go now; a job no live node can run any more ends failed."""
        finished, refreshed = [], False
        for flight in [f for f in self._flights if f.ref is None]:
            pin = self._pins.get(flight.job.cell_id)
            if flight.demand.exclusive or pin or flight.avoid:
                if not refreshed:
                    self._refresh()
                    refreshed = True
                candidates = self._candidates(flight, pin)
                if isinstance(candidates, str):
                    finished.append(self._fail(flight, candidates))
                    continue
                free = [n for n in candidates if not flight.demand.exclusive or n.host not in self._busy]
                if not free:
                    continue  # its machine is busy with another exclusive job: wait
                self._launch(flight, min(free, key=self._load))
            else:
                self._launch(flight, None)
        return finished

    def _candidates(self, flight: _Flight, pin: str | None) -> list[Node] | str:
        """The live nodes the job may run on, or why there is none."""
        if pin is not None:
            if pin not in self._nodes:
                return (f"the node its earlier rounds ran on ({pin[:12]}) has left the cluster; a cell's rounds run "
                        "on one node")
            return [self._nodes[pin]]
        fitting = [n for n in self._nodes.values() if flight.demand.fits(n)]
        if not fitting:
            return f"no live node of the Ray cluster has {flight.demand} any more"
        return [n for n in fitting if n.id != flight.avoid] or fitting

    def _load(self, node: Node) -> tuple[int, str]:
        """Jobs placed on or running on a node, to spread the work."""
        return sum((f.node or f.target) == node for f in self._flights if f.ref is not None), node.id

    def _launch(self, flight: _Flight, node: Node | None) -> None:
        need = flight.demand
        options = {"num_cpus": node.cpus if need.exclusive else need.cpus, "num_gpus": need.gpus}
        if node is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node.id, soft=False)
            if need.exclusive:
                self._busy[node.host] = flight
        job = flight.job
        sources = job_sources(job)
        flight.target = node
        flight.ref = self._task.options(**options).remote(job.to_json(), {s: self._texts[s] for s in sources},
                                                          self._specs, self.timeout_s, code_fingerprint())

    def _release(self, flight: _Flight) -> None:
        host = next((h for h, f in self._busy.items() if f is flight), None)
        if host is not None:
            del self._busy[host]

    # --- what a task reports -------------------------------------------------------------------------------

    def _next(self, flight: _Flight) -> Finished | None:
        """Read the task's next report: where it started (None), or how it ended (a Finished)."""
        from ray.exceptions import RayError, RayTaskError

        try:
            report = self._ray.get(next(flight.ref))
        except StopIteration:
            return self._fail(flight, "the Ray task ended without a result")
        except RayError as exc:
            name = type(exc.cause).__name__ if isinstance(exc, RayTaskError) and exc.cause else type(exc).__name__
            if name == "LocalRayletDiedError" or (name == "NodeDiedError" and flight.node
                                                   and flight.node.id == self._own_node):
                raise ClusterLost(f"the raylet on this machine died ({name}: {first_line(exc)})") from None
            return self._fault(flight, exc, name)
        if report["kind"] == "started":
            node_id = report["where"]["ray_node_id"]
            if node_id not in self._nodes:
                self._refresh()
            flight.node = self._nodes.get(node_id) or Node(node_id, report["where"]["hostname"],
                                                           report["where"]["hostname"], 0, 0)
            flight.where = {**report["where"], "host": flight.node.host}
            return None
        return self._ended(flight, report)

    def _ended(self, flight: _Flight, report: dict) -> Finished:
        job = flight.job
        self._remove(flight)
        log_path = self.run_dir / "logs" / f"{job.stem}.log"
        atomic_write_text(log_path, report["log"])
        if report["record"] is not None:
            record = CellRecord.from_json(report["record"], self.run_dir / "cells" / f"{job.stem}.json")
        elif report["error"] is not None:
            record = record_without_worker(job, report["error"], FAILED, duration_s=report["duration_s"])
        else:
            reason, status = how_it_ended(report["returncode"], report["timed_out"], self.timeout_s, log_path)
            record = record_without_worker(job, reason, status, duration_s=report["duration_s"])
        where = {**record.resolved.get("where", {}), **flight.where, **report["where"]}
        if flight.retried_after:
            where["retried_after"] = flight.retried_after
        record.resolved["where"] = where
        if job.round is not None and record.ok:  # the cell's later rounds run here too
            self._pins.setdefault(job.cell_id, flight.node.id)
        return Finished(job, record, report["artifacts"], log_path)

    def _fault(self, flight: _Flight, exc: Exception, name: str) -> Finished | None:
        """A Ray worker or node died under the job: once, run it again (elsewhere where it can); else, and
        for every other Ray error, the job failed with the error's class."""
        where = f"{name} on {flight.node.host}" if flight.node else name
        first = first_line(exc)
        if name in RETRIED and flight.retried_after is None:
            self._release(flight)
            flight.retried_after, flight.avoid = where, flight.node.id if flight.node else None
            flight.ref = flight.target = flight.node = None
            flight.where = {}
            self.console.print(f"[yellow]{job_label(flight.job)}: {where}: running it once more[/yellow]")
            return None
        again = f" (retried once after {flight.retried_after})" if flight.retried_after else ""
        return self._fail(flight, f"{where}: {first}{again}")

    def _fail(self, flight: _Flight, reason: str) -> Finished:
        self._remove(flight)
        record = record_without_worker(flight.job, reason, FAILED)
        record.resolved["where"] = {**flight.where, **({"retried_after": flight.retried_after}
                                                       if flight.retried_after else {})}
        return Finished(flight.job, record)

    def _remove(self, flight: _Flight) -> None:
        self._release(flight)
        self._flights.remove(flight)


def first_line(exc: Exception) -> str:
    """What a Ray error says first (its messages run to many lines), at most 300 characters."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def wait_for_listener(host: str, port: int, timeout_s: float, what: str) -> None:
    """Return once something accepts a TCP connection at ``host:port``; an environment error (OSError, exit
    4) naming ``what`` and the setting when nothing did within ``timeout_s`` (a head still starting gets
    the time to)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                return
        except OSError as exc:
            if time.monotonic() + 1 < deadline:
                time.sleep(1)
                continue
            code = exc.errno if exc.errno in errno.errorcode else errno.ETIMEDOUT  # a timeout has none
            raise OSError(code, os.strerror(code), f"{what}: nothing answered within {timeout_s:g} s "
                          "(executor.connect_timeout_s)") from None


#: what :func:`reaper` runs: wait until the driver is gone, then kill the processes named by
#: ``PID:CREATE_TIME`` arguments that still run (the same processes: a pid may have been reused)
REAPER = """
import sys, psutil
sys.stdin.buffer.read()
for arg in sys.argv[1:]:
    pid, created = arg.split(":")
    try:
        p = psutil.Process(int(pid))
        if repr(p.create_time()) == created:
            p.kill()
    except psutil.Error:
        pass
"""


def reaper(processes: list[psutil.Process]) -> subprocess.Popen:
    """A process that kills a private cluster's processes once the driver is gone, however it went (SIGKILL
    too: its end of the pipe closes then). The GCS and raylet die with the driver (Ray arms
    PR_SET_PDEATHSIG), but Ray's agents then wait ~60 s on the dead GCS before they exit."""
    alive = []
    for p in processes:
        with contextlib.suppress(psutil.Error):
            alive.append(f"{p.pid}:{p.create_time()!r}")
    return subprocess.Popen([sys.executable, "-c", REAPER, *alive], stdin=subprocess.PIPE, start_new_session=True)


def in_main_thread() -> bool:
    """Signal handlers are the main thread's to set."""
    return threading.current_thread() is threading.main_thread()


def ray_temp_dir() -> Path:
    """A private cluster's temporary folder: under the harness cache (not the shared /tmp/ray), unless that
    path is too long for the Unix sockets Ray makes in it; then a folder of this user's in the system's."""
    path = cache_dir() / "ray"
    if len(str(path).encode()) + SESSION_SOCKET_SUFFIX > SOCKET_PATH_MAX:
        path = Path(tempfile.gettempdir()) / f"harness-ray-{os.getuid()}"
    return path


def job_sources(job: Job) -> list[str]:
    """The corpus sources a job's worker reads: its dataset and the training texts of its n-grams."""
    sources = [job.cell.dataset_spec.source] if job.cell.dataset_spec else []
    for model in (job.model, job.reference_model):
        if model is not None and model.recipe:
            sources += [t["source"] for t in model.recipe["train"]]
    return sorted(set(sources))


def shipped_texts(cells: list[Cell], plan: Plan, base_dir: Path, corpora: Path | None) -> dict[str, bytes]:
    """Every text the cells' workers read, as the driver reads it (each source once)."""
    sources = set()
    for cell in cells:
        if cell.dataset_spec:
            sources.add(cell.dataset_spec.source)
        for name in [cell.model] + ([cell.reference.model] if cell.reference else []):
            recipe = plan.models[name].recipe
            sources |= {t["source"] for t in recipe["train"]} if recipe else set()
    return {s: load_corpus(s, DatasetSpec(source=s), base_dir, corpora).text.encode() for s in sorted(sources)}
