"""lm-eval: accuracy (and lm-eval's perplexities) on lm-evaluation-harness tasks, through any backend.

``tasks: {acc: {type: lm-eval, tasks: [hellaswag, arc_easy], num_fewshot: 0, limit: 500}}`` becomes one cell
per lm-eval task (``acc.hellaswag``, ``acc.arc_easy``). The cell's loaded backend is handed to lm-eval as a
model (:class:`harness.lmeval.model.HarnessLM`); lm-eval builds the requests, scores them through the
backend and aggregates. Its metrics come back as rows named ``lmeval_<metric>`` (lm-eval's ``bits_per_byte``
is not the perplexity task's), with lm-eval's stderr and document count; the lm-eval task's version and a
hash of its resolved config go in the cell's resolved params. A task whose requests the backend cannot serve
(``generate_until`` without generation) is skipped with that reason.

Offline: with a ``dataset:``, the local tasks ``harness_cloze`` and ``harness_rolling``
(:mod:`harness.sources.lmeval_tasks`) are built from that text; ``include_path`` names folders of the suite's
own lm-eval task YAMLs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from harness.backends.base import Backend
from harness.core.capabilities import GENERATE, LOGITS, SCORE
from harness.core.errors import require
from harness.core.gates import BY_STDERR, exact
from harness.core.metrics import Metric, register
from harness.sources.corpora import Corpus
from harness.sources.lmeval_tasks import CLOZE, LOCAL_TASKS, ROLLING
from harness.tasks.base import Task, TaskResult, TaskSettings
from harness.tasks.registry import register_task

#: lm-eval's request kinds and the backend capabilities each needs: a continuation's log-likelihood is a score
#: and its is-greedy flag (lm-eval's ``acc`` of a ``loglikelihood`` task) needs the full rows
NEEDS = {"loglikelihood": frozenset({SCORE, LOGITS}), "multiple_choice": frozenset({SCORE, LOGITS}),
         "loglikelihood_rolling": frozenset({SCORE}), "generate_until": frozenset({GENERATE})}
#: the local tasks' request kinds, known before lm-eval loads them
LOCAL_NEEDS = {CLOZE: NEEDS["multiple_choice"], ROLLING: NEEDS["loglikelihood_rolling"]}


def missing_capability(backend_type: str, capabilities: frozenset[str], output_type: str) -> str | None:
    """Why a backend cannot serve lm-eval requests of ``output_type`` (None: it can)."""
    missing = NEEDS[output_type] - capabilities
    if not missing:
        return None
    return (f"lm-eval {output_type} requests need capability {', '.join(sorted(missing))}, which backend "
            f"{backend_type} lacks")


class LmEvalSettings(TaskSettings):
    type: Literal["lm-eval"]
    tasks: list[str] = Field(min_length=1, description="lm-eval task names; each becomes a cell of its own")
    dataset: str | None = Field(None, description="a text to build the local tasks harness_cloze and "
                                "harness_rolling from (offline accuracy)")
    num_fewshot: int | None = Field(None, ge=0, description="default: the task's own")
    limit: int | float | None = Field(None, gt=0, description="documents per task (a fraction below 1)")
    max_length: int = Field(2048, ge=8, description="tokens per request; longer ones are cut from the left, "
                            "rolling windows are this long (lm-eval's default for models that name none)")
    batch_size: int = Field(64, ge=1, description="requests handed to the backend at once")
    include_path: str | list[str] | None = Field(None, description="folders of lm-eval task YAMLs (relative to "
                                                 "the suite file)")
    local_docs: int = Field(500, ge=1, description="documents built per local task")
    seed: int = Field(1234, description="the local cloze task's draws")
    bootstrap_iters: int = Field(100000, ge=0, description="lm-eval's bootstrap for the stderr of metrics "
                                 "without a closed form; 0: none")

    @field_validator("tasks")
    @classmethod
    def _names(cls, value):
        bad = [t for t in value if not t or "." in t or "/" in t]
        if bad:
            raise ValueError(f"expected lm-eval task names (no '.' or '/'), got {bad}")
        if len(set(value)) != len(value):
            raise ValueError("a task is named twice")
        return value

    @model_validator(mode="after")
    def _local_tasks_need_a_text(self):
        local = [t for t in self.tasks if t in LOCAL_TASKS]
        if local and self.dataset is None:
            raise ValueError(f"{', '.join(local)}: the local tasks are built from a text: set dataset")
        return self

    def variants(self) -> list[tuple[str, LmEvalSettings]]:
        return [(f".{name}", self.model_copy(update={"tasks": [name]})) for name in self.tasks]

    @property
    def include_paths(self) -> list[str]:
        paths = self.include_path
        return [] if paths is None else [paths] if isinstance(paths, str) else list(paths)


PREFIX = "lmeval_"
#: lm-eval's own metric names, prefixed so that none is mistaken for the harness's (its bits_per_byte counts a
#: document's bytes, ours a window scheme's); accuracies are judged by their stderr, perplexities as ours
register(
    *(Metric(PREFIX + name, "ratio", True, BY_STDERR)
      for name in ("acc", "acc_norm", "acc_mutual_info", "exact_match", "f1", "mcc")),
    *(Metric(PREFIX + name, unit, False, exact(0.001)) for name, unit in (
        ("perplexity", "ppl"), ("word_perplexity", "ppl"), ("byte_perplexity", "ppl"), ("bits_per_byte", "bits/byte"))),
)


@register_task("lm-eval")
class LmEvalTask(Task):
    settings_class = LmEvalSettings
    #: what a task needs depends on its requests, known once lm-eval has loaded it (:meth:`requirements`)
    requires = frozenset()
    settings: LmEvalSettings

    @classmethod
    def requirements(cls, settings: LmEvalSettings) -> frozenset[str]:
        """The local tasks' needs are known before any process starts; lm-eval's own tasks are checked in
        the cell, once lm-eval has read their output type."""
        return frozenset().union(*(LOCAL_NEEDS.get(name, frozenset()) for name in settings.tasks))

    def context_tokens(self) -> int:
        return self.settings.max_length

    def run(self, backend: Backend, corpus: Corpus | None) -> TaskResult:
        require("lm_eval", "lmeval", "task type lm-eval")
        from harness.lmeval.evaluate import evaluate_cell

        if len(self.settings.tasks) != 1:  # a cell holds one lm-eval task; more means the suite was not expanded
            raise ValueError("an lm-eval cell runs one task")
        base = self.base_dir or Path.cwd()
        includes = [str((base / p).resolve()) for p in self.settings.include_paths]
        return evaluate_cell(backend, self.settings, corpus, includes)
