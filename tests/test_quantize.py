"""The GGUF quantization ladder: rungs derived once from the shipped file by llama.cpp's own quantizer,
cached by source and type, and refused where they make no sense."""

from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, SMOLLM2_PKG
from pydantic import ValidationError

from harness.cli import main
from harness.sources.gguf_rewrite import tensor_types
from harness.sources.models import ModelSpec, resolve

pytestmark = [pytest.mark.integration, pytest.mark.gguf]


def test_rungs_are_quantized_once_and_cached(tmp_path):
    gguf = pytest.importorskip("gguf")
    q8 = resolve("q8", ModelSpec(gguf=SMOLLM2_PKG, quantize="Q8_0"), tmp_path)
    reader = gguf.GGUFReader(q8.path)
    assert reader.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    types = {t.tensor_type.name for t in reader.tensors}
    assert "Q8_0" in types and not types & {"Q4_1", "Q4_0"}
    assert q8.source.endswith("#quantize=Q8_0") and q8.path.name.endswith("-Q8_0.gguf")
    made = q8.quantization  # llama_model_quantize's time and the peak RSS of the child process that ran it
    assert made["quantize_s"] > 0 and made["label"] == "Q8_0" and made["peak_rss_mb"] > 10
    mtime = q8.path.stat().st_mtime_ns
    again = resolve("q8", ModelSpec(gguf=SMOLLM2_PKG, quantize="Q8_0"), tmp_path)
    assert again.path == q8.path and again.path.stat().st_mtime_ns == mtime and again.sha256 == q8.sha256
    assert again.quantization == {**made, "cached": True} and made["path"] == str(q8.path)
    f32 = resolve("f32", ModelSpec(gguf=SMOLLM2_PKG, quantize="F32"), tmp_path)
    assert f32.bytes_on_disk > 3 * q8.bytes_on_disk  # 4 bytes a weight against 8.5 bits
    assert not list(Path(q8.path.parent).glob("*.tmp"))


def test_quantize_is_checked_in_the_suite():
    with pytest.raises(ValidationError, match="quantize: expected one of F32, F16, Q8_0"):
        ModelSpec(gguf=SMOLLM2_PKG, quantize="Q9_9")
    with pytest.raises(ValidationError, match="quantize applies to a gguf, hf or train source only"):
        ModelSpec(ngram={"order": 2, "train": "builtin:stdlib-docs#train"}, quantize="Q8_0")
    assert ModelSpec(hf="models/x", quantize="Q8_0").kind == "gguf"  # an HF source's rung is a GGUF file


def test_an_unset_quantize_leaves_cell_ids_as_they_were():
    """Suites written before quantize existed keep their cell ids (resume and history key on them)."""
    assert "quantize" not in ModelSpec(gguf=SMOLLM2_PKG).model_dump(mode="json")
    assert ModelSpec(gguf=SMOLLM2_PKG, quantize="Q4_0").model_dump(mode="json")["quantize"] == "Q4_0"


def test_tensor_types_show_the_k_quant_fallbacks(smollm2_path, tmp_path):
    """SmolLM2's hidden size (576) is no multiple of 256, so llama.cpp stores the tensors that K-quants
    cannot hold in a fallback type: its "Q6_K" file is mostly Q8_0. The shipped file: Q4_1, embeddings Q8_0."""
    shipped = tensor_types(smollm2_path)
    assert list(shipped)[:2] == ["Q4_1", "Q8_0"] and shipped["Q4_1"] == pytest.approx(0.789, abs=0.001)
    assert sum(shipped.values()) == pytest.approx(1, abs=1e-3)
    q6 = tensor_types(resolve("q6", ModelSpec(gguf=SMOLLM2_PKG, quantize="Q6_K"), tmp_path).path)
    assert q6["Q8_0"] > 0.75 and 0.15 < q6["Q6_K"] < 0.25


def test_the_ladder_suite_on_a_prefix_is_monotone(corpora_dir, tmp_path):
    """suites/quantization.yaml's GGUF rungs, as CI can afford them: three rungs on the first 2,048 tokens
    of WikiText-2 (1,020 scored positions). Q8_0 stays closest to the F32 reference, Q2_K furthest."""
    suite = REPO / "suites" / "quantization.yaml"
    out = tmp_path / "ladder"
    argv = ["run", str(suite), "--corpora", str(corpora_dir), "--out", str(out), "--set", "tasks.kld.max_tokens=2048"]
    for rung in ("q8_0", "q4_0", "q2_k"):
        argv += ["--only", f"{rung}/gguf-cpu/kld"]
    assert main(argv) == 0
    table = pd.read_parquet(out / "results.parquet")
    kld = table[table.metric == "kld_mean"].set_index("model").value
    top1 = table[table.metric == "same_top1"].set_index("model").value
    assert 0 < kld["q8_0"] < kld["q4_0"] < kld["q2_k"]
    assert top1["q8_0"] > top1["q4_0"] > top1["q2_k"]
