"""harness report: report.md with its PNGs and a self-contained report.html; views chosen by what ran."""

import base64
import re

import numpy as np
import pytest
from runs import SCRIPT_XSS, XSS, backend, failed_cell, hostile_nights, perplexity_cell, throughput_cell, write_run

from harness.cli import main
from harness.core.format import fmt_value
from harness.core.metrics import Measurement
from harness.report import render as report
from harness.report import views
from harness.results import store as results
from harness.results.records import SKIPPED

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_of_perplexity_and_throughput(tmp_path, capsys):
    rng = np.random.default_rng(0)
    run = write_run(tmp_path / "run", [
        perplexity_cell(rng), perplexity_cell(rng, backend("hf-cpu"), nll=3.36, model_bytes=538_060_288),
        throughput_cell(rng, read_gb_s=30.0),
        throughput_cell(rng, backend("hf-cpu"), decode=12.7, prefill=503, model_bytes=538_060_288, read_gb_s=30.0),
        failed_cell(backend("hf-cuda"), SKIPPED, "device cuda: no CUDA device visible"),
    ])
    assert main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    page = (run / "report.html").read_text()
    titles = re.findall(r"^## (.+)$", md, flags=re.M)
    assert titles == ["Results", "Cells that did not run", "Perplexity and bits per byte", "Throughput",
                      "Decode against the memory-bandwidth limit", "Memory and model size"]
    images = re.findall(r"!\[[^]]*\]\((report_files/[^)]+\.png)\)", md)
    assert images == ["report_files/perplexity-ppl.png", "report_files/throughput-speed.png",
                      "report_files/roofline.png", "report_files/memory.png"]
    for image in images:
        assert (run / image).read_bytes().startswith(PNG)
    # self-contained: every image inline, nothing fetched
    inline = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(inline) == len(images)
    assert all(base64.b64decode(data).startswith(PNG) for data in inline)
    assert not re.search(r"(src|href)=['\"](?!data:)", page)
    assert "no CUDA device visible" in md and "no CUDA device visible" in page
    # the figures in the tables are the run's
    table = results.read_run(run).results
    decode = table[(table.metric == "decode_tok_s") & (table.backend == "hf-cpu")]["value"].iloc[0]
    assert f"{decode:.4g}" in md.split("## Throughput")[1]
    mbu = table[(table.metric == "mbu") & (table.backend == "hf-cpu")]["value"].iloc[0]
    assert mbu == pytest.approx(decode * 538_060_288 * 1.05 / 30e9, rel=1e-9)  # MBU scales decode: same median
    assert f"{mbu:.4g}" in md.split("## Throughput")[1]


def test_views_follow_the_tasks_that_ran(tmp_path):
    rng = np.random.default_rng(1)
    run = write_run(tmp_path / "ppl-only", [perplexity_cell(rng)])
    titles = [s.title for s in report.build(results.read_run(run))]
    assert "Perplexity and bits per byte" in titles and "Throughput" not in titles


def test_a_run_of_kld_cells_only_has_the_quantization_view(tmp_path):
    """A kld cell reports token_ppl (of the candidate) but no bits per byte: no perplexity view for it."""
    rng = np.random.default_rng(3)
    rec = perplexity_cell(rng)
    rec["measurements"] = [m for m in rec["measurements"] if m["metric"] in ("token_ppl", "model_bytes")]
    rec["measurements"].append({**rec["measurements"][0], "metric": "kld_mean", "value": 0.003, "unit": "nats"})
    run = write_run(tmp_path / "kld-only", [rec])
    assert main(["report", str(run)]) == 0
    titles = [s.title for s in report.build(results.read_run(run))]
    assert "Quantization: quality against size and speed" in titles and "Perplexity and bits per byte" not in titles


def test_decoding_and_quantization_views(tmp_path):
    rng = np.random.default_rng(2)
    records = []
    for name, kld, size in (("q4", 0.05, 96e6), ("q8", 0.01, 160e6), ("nf4", 0.08, 166e6)):
        rec = perplexity_cell(rng, backend(name), model_bytes=size)
        rec["measurements"].append({**Measurement("token_ppl", 1.0).row(), "metric": "kld_mean", "value": kld,
                                    "unit": "nats", "higher_is_better": False})
        rec["resolved"]["backend"]["tensor_types"] = {"Q8_0": 0.8, "Q6_K": 0.197, "F32": 0.003}
        records.append(rec)
    for temp in (0.5, 1.0, 1.5):
        rec = perplexity_cell(rng, backend("gguf-cpu"))
        rec["cell"]["task"] = f"decode.native.t{temp}"
        strategy = {"temperature": temp, "top_k": None, "top_p": None, "min_p": None, "repetition_penalty": 1.0,
                    "beams": 1}
        rec["resolved"] = {"task": {"strategy": strategy, "sampler": "native", "chat": False}}
        rec["cell_id"] = rec["cell_id"][:12] + f"{int(temp * 10):04d}"
        rec["measurements"] = [{**Measurement("token_ppl", 1.0).row(), "metric": m, "value": v * temp,
                                "unit": "", "higher_is_better": True}
                               for m, v in (("entropy_mean", 2.0), ("distinct_2", 0.4))]
        records.append(rec)
    run = write_run(tmp_path / "run", records)
    sections = {s.title: s for s in report.build(results.read_run(run))}
    quant = sections["Quantization: quality against size and speed"]
    assert [b.name for b in quant.blocks if isinstance(b, views.Plot)] == ["quantization"]
    quant_table = next(b for b in quant.blocks if hasattr(b, "columns"))
    assert quant_table["weight_types"].tolist() == ["Q8_0 80% + Q6_K 20%"] * 3
    assert quant_table["pareto_size"].tolist() == [True, True, False]  # nf4: bigger and worse than q8
    decoding = sections["Decoding"]
    table = next(b for b in decoding.blocks if hasattr(b, "columns"))
    assert table["temperature"].tolist() == [0.5, 1.0, 1.5]
    assert table["entropy_mean"].tolist() == ["1", "2", "3"]


def test_report_of_a_missing_run_is_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_pareto_front_by_hand():
    # sizes and KLDs: b is dominated by a (bigger and worse), d by c; a, c, e trade size for quality
    cost = np.array([100.0, 120.0, 60.0, 70.0, 200.0])
    loss = np.array([0.01, 0.02, 0.05, 0.06, 0.001])
    assert views.pareto_front(cost, loss).tolist() == [True, False, True, False, True]


def test_labels_of_points_at_the_same_place_do_not_overprint():
    """Two backends at the same speed (llama.cpp and gpt4all run the same GGUF): the second label moves down."""
    from matplotlib.figure import Figure

    from harness.report.views import Panel, Series, _draw_panel

    ax = Figure().subplots()
    points = Series("", [1e8, 1.02e8, 5e8], [93.9, 93.2, 14.8], labels=["gguf-cpu", "gpt4all-cpu", "hf-fp32"],
                    kind="points")
    limit = Series("limit", [5e7, 1e9], [676.0, 33.8], kind="line", markers=False)
    _draw_panel(ax, Panel("roofline", [limit, points], xscale="log", yscale="log"))
    offsets = {a.get_text(): a.xyann[1] for a in ax.texts}
    assert offsets["gguf-cpu"] != offsets["gpt4all-cpu"] and offsets["hf-fp32"] == 3
    assert ax.lines[0].get_marker() in (None, "None", "")


def test_plots_of_tasks_whose_names_clash_get_a_file_each_and_names_stay_text(tmp_path):
    """Tasks 'p 1' and 'p_1' once shared report_files/perplexity-p_1.png; a task or model holding markup
    is text in report.html and no HTML in report.md."""
    run = hostile_nights(tmp_path, n=1)[0]
    assert main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    images = re.findall(r"!\[[^\n]*\]\((report_files/[^)]+\.png)\)", md)
    assert len(images) == len(set(images)) == 4  # a perplexity plot per task, and the memory view's
    assert sorted(p.name for p in (run / "report_files").iterdir()) == sorted(i.split("/")[1] for i in images)
    assert "report_files/perplexity-p_1.png" in images
    page = (run / "report.html").read_text()
    for crafted in (XSS, SCRIPT_XSS, "<img src=x", "<script"):
        assert crafted not in page and crafted not in md, crafted
    assert "x&#x27;&gt;&lt;img src=x onerror=window.__pwned=1&gt;" in page
    assert "x'>&lt;img src=x onerror=window.__pwned=1>" in md


def test_the_quantization_view_shows_every_family_and_the_conversion_floor(tmp_path):
    """The lab: GGUF rungs with and without an importance matrix, bitsandbytes at load, HF-derived quants and the
    fp32 reference, each with its family, settings and bits per weight; the F32 GGUF's KLD against the fp32
    reference is the conversion floor; what making a quant cost shows when the run has it."""
    import pandas as pd
    from runs import lab_records

    run = write_run(tmp_path / "lab", lab_records(np.random.default_rng(5)))
    section = {s.title: s for s in report.build(results.read_run(run))}["Quantization: quality against size and speed"]
    table = next(b for b in section.blocks if hasattr(b, "columns")).set_index(["model", "backend"])
    assert table["family"].tolist() == ["fp32", "F32", "gguf", "gguf", "gguf+imatrix", "bnb", "gptq", "torchao"]
    assert table["settings"].tolist() == ["", "", "Q8_0", "Q4_K_M", "Q4_K_M+imatrix=pride/100x512", "nf4",
                                          "gptq:w4g128", "torchao:int8_weight_only"]
    # bits per weight: the file's where the backend runs it as stored; bitsandbytes: the loaded weights
    assert table.loc[("q8_0", "gguf-cpu"), ["bits_per_weight", "linear_bpw", "bpw_of"]].tolist() == [
        fmt_value(round(8 * 18.4e6 / 17_301_760, 4)), fmt_value(round(8 * 5.01e6 / 4_718_592, 4)), "file"]
    nf4 = table.loc[("llama", "hf-nf4")]
    assert nf4["bpw_of"] == "loaded" and nf4["linear_bpw"] == fmt_value(float("nan"))
    kld = {row[:2]: row[2] for row in results.read_run(run).results.query("metric == 'kld_mean'")[
        ["model", "backend", "value"]].itertuples(index=False)}
    assert nf4["bits_per_weight"] == fmt_value(8 * 52.9e6 / 17_301_760)
    assert table.loc[("llama", "hf-fp32"), "linear_bpw"] == fmt_value(32.0)  # a uniform dtype: 32 bits
    assert "quantize_s" not in table  # no variant reports it
    floor = kld[("f32", "gguf-cpu")]
    assert any(f"is {fmt_value(floor)} nats" in b for b in section.blocks if isinstance(b, str))
    plot = next(b for b in section.blocks if isinstance(b, views.Plot) and b.name == "quantization")
    size = plot.panels[0]
    names = [s.name for s in size.series]
    assert names == ["Pareto front", "fp32", "F32", "gguf", "gguf+imatrix", "bnb", "gptq", "torchao",
                     "conversion floor (F32 GGUF)"]
    assert size.series[-1].y == [floor, floor]
    gguf = size.series[names.index("gguf")]
    assert gguf.labels == ["q8_0/gguf-cpu", "q4_k_m/gguf-cpu"] and gguf.color != size.series[names.index("bnb")].color
    # the cost of a quant, where the run has it (registered by the methods that derive models)
    frame = pd.read_parquet(run / "results.parquet")
    cost = frame[(frame["metric"] == "load_s") & (frame["model"] == "gptq")].assign(metric="quantize_s", value=612.0)
    pd.concat([frame, cost], ignore_index=True).to_parquet(run / "results.parquet", index=False)
    section = {s.title: s for s in report.build(results.read_run(run))}["Quantization: quality against size and speed"]
    table = next(b for b in section.blocks if hasattr(b, "columns"))
    assert table["quantize_s"].tolist() == [fmt_value(float("nan"))] * 6 + ["612", fmt_value(float("nan"))]
    assert main(["report", str(run)]) == 0
    assert (run / "report_files" / "quantization.png").read_bytes().startswith(PNG)
