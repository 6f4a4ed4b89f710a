"""The machine probe: its arithmetic on a scripted clock (never a test of speed), its day-long cache, and
that it really runs (tiny sizes)."""

import itertools

import pytest

from harness.results import probe


def ticking(step: float):
    """A clock that advances ``step`` seconds per reading: every timed call lasts exactly ``step``."""
    counter = itertools.count()
    return lambda: next(counter) * step


def test_bandwidth_and_gemm_arithmetic_on_a_scripted_clock():
    read = probe.memory_read(2, 8 * 2**20, repeats=3, timer=ticking(0.5))
    assert read["gb_s"] == pytest.approx(8 * 2**20 / 0.5 / 1e9) and read["threads"] == 2
    gemm = probe.gemm_numpy(64, repeats=2, timer=ticking(0.25))
    assert gemm["flop_s"] == pytest.approx(2 * 64**3 / 0.25)


def test_ceiling_per_dtype_is_the_best_library():
    gemms = [{"dtype": "fp32", "flop_s": 2.0}, {"dtype": "fp32", "flop_s": 3.0}, {"dtype": "bf16", "flop_s": 5.0}]
    assert probe._best_per_dtype(gemms) == {"fp32": 3.0, "bf16": 5.0}
    machine = {"cpu": {"memory_read": {"gb_s": 7.0}, "gemm_flop_s": {"fp32": 3.0}}}
    assert probe.ceilings(machine, "cpu", "fp32") == (7e9, 3.0)
    assert probe.ceilings(machine, "cpu", "bf16") == (7e9, None)
    assert probe.ceilings(machine, "cuda", "fp32") == (None, None)


def test_probe_runs_and_is_cached_for_a_day(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    clock = [1000.0]
    sizes = {"nbytes": 2**20, "gemm_n": 32, "repeats": 1}
    first = probe.probe(1, now=lambda: clock[0], **sizes)
    assert not first["cached"] and first["cpu"]["memory_read"]["gb_s"] > 0
    assert first["cpu"]["gemm_flop_s"]["fp32"] > 0 and first["cpu"]["memory_read"]["repeats"] == 1
    clock[0] += probe.MAX_AGE_S - 1
    again = probe.probe(1, now=lambda: clock[0], **sizes)
    assert again["cached"] and again["measured_at"] == first["measured_at"]
    assert not probe.probe(2, now=lambda: clock[0], **sizes)["cached"]  # another thread count, another entry
    assert not probe.probe(1, rerun=True, now=lambda: clock[0], **sizes)["cached"]
    clock[0] += probe.MAX_AGE_S + 1
    assert not probe.probe(1, now=lambda: clock[0], **sizes)["cached"]
    assert "cpu: read" in probe.probe_line(first)


def test_a_damaged_probe_file_is_measured_again(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    sizes = {"nbytes": 2**20, "gemm_n": 32, "repeats": 1}
    path = probe._cache_path(probe.cache_key(1))
    path.parent.mkdir(parents=True)
    path.write_text('{"key": ')  # cut short
    assert not probe.probe(1, **sizes)["cached"]
    assert f"cache entry {path} is damaged" in capsys.readouterr().err
    assert probe.probe(1, **sizes)["cached"]
