"""Where a run's cells execute (``executor:`` of a suite, ``--executor``/``--address`` of ``harness run``).

A run setting, not a cell setting: it never enters ``cell_id``, so a suite run locally and on a cluster
has the same cells, and ``--resume`` and ``compare`` match them across executors.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from harness.core.errors import UserError
from harness.core.settings import StrictModel

#: what ``ray.init(address=...)`` takes from a driver that runs on a node of the cluster: auto (the cluster
#: ``ray start`` left on this machine) or HOST:PORT of the head's GCS
_ADDRESS = re.compile(r"^(auto|(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9_.-]+):\d{1,5})$")


class ExecutorSettings(StrictModel):
    type: Literal["local", "ray"] = Field("local", description="local: one cell at a time on this machine; "
                                          "ray: every cell as a Ray task on a cluster (pip install 'harness[ray]')")
    address: str | None = Field(None, description="ray: the cluster to join (auto, HOST:PORT); "
                                "unset: a private cluster on this machine, stopped when the run ends")
    exclusive: Literal["timing", "all"] = Field(
        "timing", description="ray: which cells get a machine to themselves (no other timing cell on the host, "
        "no other cell on the node): timing = throughput cells and cells whose backend threads are unset; "
        "all = every cell")
    connect_timeout_s: float = Field(
        60.0, gt=0, allow_inf_nan=False, description="ray with an address: how long to wait for the cluster to "
        "answer before giving up (an environment error, exit 4)")

    @model_validator(mode="after")
    def _address_is_rays(self):
        if self.address is not None:
            if self.type != "ray":
                raise ValueError("address applies to type ray")
            if not _ADDRESS.match(self.address):
                raise ValueError(f"address: expected auto or HOST:PORT, got {self.address!r}")
        return self


def effective(suite_setting: ExecutorSettings, executor: str | None, address: str | None) -> ExecutorSettings:
    """The suite's executor with the command line's ``--executor``/``--address`` on top (the command line
    wins); raises UserError naming the option that does not fit."""
    data = suite_setting.model_dump()
    if executor is not None:
        data["type"] = executor
        if executor == "local":
            data["address"] = None
    if address is not None:
        if data["type"] != "ray":
            raise UserError(f"--address {address}: applies to --executor ray")
        data["address"] = address
    try:
        return ExecutorSettings.model_validate(data)
    except ValueError as exc:
        raise UserError(f"--address {address}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def check_available(settings: ExecutorSettings, where: str) -> None:
    """The executor's package is installed (what ``validate`` checks without starting a cluster)."""
    if settings.type == "ray":
        from harness.core.errors import ensure_available

        ensure_available("ray", "ray", f"{where} ray")
