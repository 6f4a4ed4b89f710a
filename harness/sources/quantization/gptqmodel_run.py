"""What GPTQ and AWQ share: both are GPT-QModel (the ``quant`` extra) run on windows of a suite dataset in the
derivation's child process; :mod:`.gptq` and :mod:`.awq` name the algorithm's config, dtype and CPU kernel.

GPT-QModel 7.6 on a CPU needs a few things set for it: its worker pool sized to the threads (its default, half
the cores, is one worker on 2 cores), its JIT-built pack extension kept in the harness cache and its
per-run logs (``./logs``) in a scratch folder removed afterwards (nothing written outside the cache), layers
held in memory instead of offloaded to a temporary folder. The token embedding and the output head stay
unquantized (``lm_head=False``, no embedding config: the one policy of
:data:`harness.sources.quantization.method.KEEP_UNQUANTIZED`).
The checkpoint it saves is the GPTQ/AWQ format transformers loads with ``from_pretrained`` (through optimum
and GPT-QModel's kernels), as a user loads a published GPTQ or AWQ model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import ClassVar, Literal, get_args

from pydantic import Field

from harness.core.errors import UserError, require
from harness.core.settings import StrictModel
from harness.sources.cache import cache_dir
from harness.sources.imatrix import calibration_windows
from harness.sources.quantization.method import Calibration, QuantMethod

#: the extra that installs GPT-QModel (its numpy pin keeps it out of the other extras), the distributions whose
#: versions key a derived model and the modules a run needs (optimum: transformers loads the checkpoint through it)
EXTRA = "quant"
LIBRARIES = ("gptqmodel", "optimum")
MODULES = ("gptqmodel", "optimum")
#: the weight matrices' row widths a group must divide: every linear layer of a Llama block reads one of them
ROW_WIDTHS = ("hidden_size", "intermediate_size")
#: the group sizes offered: GPT-QModel's CPU kernels' (a group of a whole row, -1, is left out)
GroupSize = Literal[32, 64, 128]
#: what GPT-QModel printed while making the model, kept beside it
LOG = "gptqmodel.log"


class CalibrationSpec(StrictModel):
    """The calibration windows, read from the start of a suite dataset as llama-imatrix reads its chunks."""

    dataset: str = Field(description="a dataset of this suite: the calibration text")
    samples: int = Field(128, ge=1, description="windows of seq_len tokens (fewer if the text is shorter)")
    seq_len: int = Field(512, ge=16, description="tokens a window, the first one BOS where the vocabulary has one")

    def __str__(self) -> str:
        """How a model's label shows it: ``calibration=wiki/128x512``."""
        return f"calibration={self.dataset}/{self.samples}x{self.seq_len}"


def check_group_size(source_dir: Path, group_size: int) -> None:
    """A group that does not divide a row fails in GPT-QModel's CPU kernels (SmolLM2's 576-wide rows with 128):
    refuse it in one line, naming a group size that fits."""
    config = json.loads((source_dir / "config.json").read_text())
    for key in ROW_WIDTHS:
        width = config.get(key)
        if isinstance(width, int) and width % group_size:
            fits = [g for g in get_args(GroupSize) if width % g == 0]
            hint = f"; {fits[-1]} divides it" if fits else ""
            raise UserError(f"quantize.group_size: {group_size} does not divide the model's {key} "
                            f"({width}){hint}")


def quantize_with_gptqmodel(config, source_dir: Path, target: Path, calibration: Calibration | None,
                            spec: CalibrationSpec, threads: int | None, dtype: str, backend: str | None = None
                            ) -> None:
    """Load the model in ``source_dir`` in ``dtype`` with GPT-QModel's ``config`` (made by ``config(gptqmodel)``),
    quantize it on the calibration windows and save the checkpoint into ``target``."""
    if calibration is None:
        raise UserError("quantize.calibration.dataset: the calibration text was not resolved")
    workers = threads or os.cpu_count() or 1
    os.environ["GPTQMODEL_CPU_WORKERS"] = str(workers)
    os.environ["GPTQMODEL_TORCH_EXTENSIONS_DIR"] = str(cache_dir() / "gptqmodel-extensions")
    torch = require("torch", "hf", "GPTQ/AWQ quantization")
    transformers = require("transformers", "hf", "GPTQ/AWQ quantization")
    torch.set_num_threads(workers)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source_dir)
    ids = tokenizer(calibration.text, add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id if ids and ids[0] == tokenizer.bos_token_id else None
    windows = calibration_windows(ids, spec.seq_len, spec.samples, bos)
    samples = [{"input_ids": w, "attention_mask": [1] * len(w)} for w in windows]
    scratch = target / ".gptqmodel-scratch"
    scratch.mkdir()
    here = Path.cwd()
    os.chdir(scratch)  # GPT-QModel writes its per-run logs under ./logs
    try:
        # its banner, per-layer tables and saved configs (hundreds of lines) go to a log beside the model; the
        # terminal keeps the harness's progress line
        with open(target / LOG, "w") as log, contextlib.redirect_stdout(log):
            gptqmodel = require("gptqmodel", EXTRA, "GPTQ/AWQ quantization")
            model = gptqmodel.GPTQModel.load(str(source_dir), config(gptqmodel), dtype=getattr(torch, dtype))
            model.quantize(samples, batch_size=1, tokenizer=tokenizer,
                           **({"backend": getattr(gptqmodel.BACKEND, backend)} if backend else {}))
            model.save(str(target))
    finally:
        os.chdir(here)
    shutil.rmtree(scratch)


class GptqModelMethod(QuantMethod):
    """A method GPT-QModel runs (GPTQ, AWQ): 4 bits, a group size, calibration windows; a subclass declares its
    ``method``, its GPT-QModel ``config`` and the dtype and CPU kernel it quantizes with."""

    produces: ClassVar = "hf"
    libraries: ClassVar = LIBRARIES
    extra: ClassVar = EXTRA
    modules: ClassVar = MODULES
    #: the dtype GPT-QModel quantizes in, and its kernel (None: GPT-QModel's choice)
    dtype: ClassVar[str] = "float32"
    kernel: ClassVar[str | None] = None

    bits: Literal[4] = Field(4, description="bits a weight: 4 (AWQ's GEMM format packs 4; GPT-QModel 7.6's CPU "
                             "kernel for 8-bit GPTQ declares float16/bfloat16 only)")
    group_size: GroupSize = Field(128, description="weights sharing a scale and zero point along a row")
    calibration: CalibrationSpec = Field(description="the suite dataset whose windows the method is fitted on")

    @property
    def label(self) -> str:
        """The method's settings, then its calibration."""
        return f"{super().label},{self.calibration}"

    def config(self, gptqmodel):
        """GPT-QModel's quantization config of this method (``gptqmodel``: the imported package)."""
        raise NotImplementedError

    def quantize(self, source_dir: Path, target: Path, calibration: Calibration | None, threads: int) -> None:
        check_group_size(source_dir, self.group_size)
        quantize_with_gptqmodel(self.config, source_dir, target, calibration, self.calibration, threads,
                                dtype=self.dtype, backend=self.kernel)
