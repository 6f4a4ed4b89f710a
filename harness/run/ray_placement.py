"""Where a cell of the Ray executor may run: the cluster's nodes (a machine is its ``harness-host`` label, else
its hostname) and what a cell asks of one (:class:`Demand`: CPU threads, GPUs, a machine to itself)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.backends import BACKENDS
from harness.suite.cells import Cell
from harness.tasks import TASKS

#: a node label naming the machine a node runs on, where its hostname does not (containers, tests)
HOST_LABEL = "harness-host"


@dataclass(frozen=True)
class Node:
    id: str
    #: the machine: a ``harness-host`` label, else the hostname
    host: str
    hostname: str
    cpus: int
    gpus: int


@dataclass(frozen=True)
class Demand:
    """What a cell asks of a node."""

    #: CPU threads; None: every CPU of its node (the backend's default)
    cpus: int | None
    gpus: int
    #: no other exclusive cell on its machine, no other cell on its node
    exclusive: bool

    def fits(self, node: Node) -> bool:
        return node.cpus >= (self.cpus or 1) and node.gpus >= self.gpus

    def __str__(self) -> str:
        cpus = "all CPUs of a node" if self.cpus is None else f"{self.cpus} CPU{'s' * (self.cpus != 1)}"
        return cpus + (f" and {self.gpus} GPU{'s' * (self.gpus != 1)}" if self.gpus else "")


def demand(cell: Cell, exclusive: str) -> Demand:
    """A cell's request: the most threads and GPUs of its backend and its reference's (they run in turn)."""
    specs = [cell.backend_spec] + ([cell.reference.backend_spec] if cell.reference else [])
    threads = [BACKENDS[s.type].cpu_threads(s) for s in specs]
    cpus = None if None in threads else max(threads)
    gpus = max(BACKENDS[s.type].gpus(s) for s in specs)
    timing = TASKS[cell.task_spec.type].timing or exclusive == "all"
    return Demand(cpus, gpus, timing or cpus is None)


def alive_nodes(ray) -> list[Node]:
    return [Node(n["NodeID"], (n.get("Labels") or {}).get(HOST_LABEL) or n["NodeManagerHostname"],
                 n["NodeManagerHostname"], int(n["Resources"].get("CPU", 0)), int(n["Resources"].get("GPU", 0)))
            for n in ray.nodes() if n["Alive"]]
