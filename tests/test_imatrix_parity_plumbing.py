"""benchmarks/imatrix_parity.py's pieces that need no llama.cpp build: llama-imatrix's GGUF output read back as
means, the per-column comparison, the command line."""

import importlib.util
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

pytestmark = [pytest.mark.gguf]
gguf = pytest.importorskip("gguf")
_spec = importlib.util.spec_from_file_location("imatrix_parity", REPO / "benchmarks" / "imatrix_parity.py")
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)


def test_llama_imatrix_output_is_read_as_sums_over_counts(tmp_path):
    """llama-imatrix stores, per weight, the sum of squares per column (``NAME.in_sum2``, one row per expert)
    and the tokens counted (``NAME.counts``); the mean is their ratio."""
    path = tmp_path / "imatrix.gguf"
    writer = gguf.GGUFWriter(path, "imatrix")
    writer.add_tensor("blk.0.attn_q.weight.in_sum2", np.array([[2.0, 4.0, 6.0]], dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight.counts", np.array([[4.0]], dtype=np.float32))
    writer.add_tensor("blk.0.ffn_down.weight.in_sum2", np.array([[1.0, 3.0]], dtype=np.float32))
    writer.add_tensor("blk.0.ffn_down.weight.counts", np.array([[2.0]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    matrix = parity.read_imatrix_gguf(path)
    np.testing.assert_allclose(matrix["blk.0.attn_q.weight"], [0.5, 1.0, 1.5])
    np.testing.assert_allclose(matrix["blk.0.ffn_down.weight"], [0.5, 1.5])


def test_columns_are_compared_relative_to_llama_imatrix():
    theirs = {"a": np.array([1.0, 2.0]), "b": np.array([1.0]), "c": np.array([3.0])}
    ours = {"a": np.array([1.0005, 2.0]), "b": np.array([1.01])}
    report = parity.compare_columns(ours, theirs)
    assert report["tensors"] == 2 and report["columns"] == 3 and report["only_theirs"] == ["c"]
    assert report["max_relative"] == pytest.approx(0.01) and report["worst_tensors"]["a"] == pytest.approx(5e-4)
    assert report["share_over_target"] == pytest.approx(1 / 3)


def test_llama_imatrix_runs_one_window_per_batch_without_perplexity():
    args = Namespace(n_ctx=512, chunks=100, threads=2)
    cmd = parity.llama_imatrix_command(Path("bin/llama-imatrix"), Path("m.gguf"), Path("t.txt"), Path("o.gguf"), args)
    flags = dict(zip(cmd[1::2], cmd[2::2], strict=False))
    assert flags["-c"] == flags["-b"] == "512" and flags["--chunks"] == "100" and "--no-ppl" in cmd
