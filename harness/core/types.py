"""The records that cross from tasks to backends and back: a scoring window and what a load cost."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.core.roofline import ModelShape


@dataclass
class Window:
    """Tokens fed to the model and, per position, the token its logits must predict (-1: not scored).

    Labels are already shifted: ``labels[p]`` is the target of the logits at position ``p``. Every
    window scheme (chunked, sliding, rolling) is expressed this way, so backends need not know them.
    """

    input_ids: np.ndarray
    labels: np.ndarray
    #: where each target sits in the token stream the window was cut from (for its bytes)
    positions: np.ndarray | None = None

    def __post_init__(self):
        self.input_ids = np.asarray(self.input_ids, dtype=np.int32)
        self.labels = np.asarray(self.labels, dtype=np.int32)
        if self.input_ids.shape != self.labels.shape:
            raise ValueError("input_ids and labels must have the same length")
        if self.positions is not None:
            self.positions = np.asarray(self.positions, dtype=np.int64)
            if len(self.positions) != len(self.targets):
                raise ValueError("one position per target expected")

    @property
    def scored_positions(self) -> np.ndarray:
        return np.flatnonzero(self.labels >= 0)

    @property
    def targets(self) -> np.ndarray:
        return self.labels[self.labels >= 0]


@dataclass
class LoadInfo:
    """What loading cost and what was loaded; ``details`` lands in the cell's resolved params."""

    load_s: float
    #: the weights' bytes in memory as loaded (after any quantization); bytes on disk go in details
    model_bytes: int
    details: dict = field(default_factory=dict)
    #: layers, heads and dtypes for the bytes-per-token and FLOP formulas; None with ``no_shape`` saying why
    shape: ModelShape | None = None
    no_shape: str = "the backend reports no model shape"
