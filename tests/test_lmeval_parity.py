"""The harness's lm-eval model against lm-eval's own: SmolLM2 through the harness's ``hf`` backend (float32,
CPU) and through lm-eval's ``hf`` model (HFLM, ``softmax_dtype=float64``) on the same HF directory (the one
the hf backend converts the GGUF to), on the local multiple-choice task and the local rolling task.

Every request's log-likelihood agrees within :data:`PER_TOKEN` nats per scored token, every is-greedy flag is
the same, and the task metrics agree to 4 significant digits. The tolerance is float32's: most requests agree
to 1e-13 (the same logits); a few differ by ~1.5e-6 per token where the hf backend's output head, computed on
the scored rows only, meets a GEMM kernel of another shape than HFLM's full-sequence head, which rounds the
float32 logits otherwise. lm-eval's own HFLM differs from itself by as much (1.5e-5 on a request) between
batch sizes 1 and 8.

The default run checks a few documents; ``pytest -m parity`` (tox -e parity) sixty.
"""

from __future__ import annotations

import math

import pytest

pytestmark = [pytest.mark.lmeval, pytest.mark.hf, pytest.mark.gguf, pytest.mark.integration]
lm_eval = pytest.importorskip("lm_eval", reason="needs the lmeval extra (pip install -e '.[lmeval]')")
pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]')")

from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from harness.backends.hf.backend import HfBackend, HfSettings  # noqa: E402
from harness.lmeval.model import HarnessLM  # noqa: E402
from harness.sources.corpora import Corpus  # noqa: E402
from harness.sources.lmeval_tasks import CLOZE, ROLLING, ROLLING_BODY, rolling_docs, write_local_tasks, write_task  # noqa: E402
from harness.tasks.perplexity import PerplexitySettings, PerplexityTask  # noqa: E402

PER_TOKEN = 2e-6
MAX_LENGTH = 128  # rolling documents span several windows


@pytest.fixture(scope="module")
def persuasion(corpora_dir) -> str:
    return (corpora_dir / "janeausten" / "persuasion.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def models(smollm2_model):
    """(the harness's lm-eval model on the hf backend, lm-eval's HFLM on the same directory)."""
    backend = HfBackend(HfSettings(type="hf", dtype="float32", device="cpu", n_threads=2), smollm2_model)
    hf_dir = backend.prepare()["hf_dir"]
    backend.load(MAX_LENGTH)
    ours = HarnessLM(loaded=backend, max_length=MAX_LENGTH, batch_size=4)
    theirs = HFLM(pretrained=hf_dir, dtype="float32", device="cpu", softmax_dtype="float64",
                  max_length=MAX_LENGTH, batch_size=4)
    yield ours, theirs
    backend.close()


def evaluate(lm, manager: TaskManager, docs: int) -> dict:
    return lm_eval.simple_evaluate(model=lm, tasks=[CLOZE, ROLLING], limit=docs, task_manager=manager,
                                   log_samples=True, bootstrap_iters=0)


def check_parity(models, persuasion, tmp_path, docs: int) -> None:
    ours_lm, theirs_lm = models
    manager = TaskManager(include_path=str(write_local_tasks(tmp_path, persuasion, n=docs, seed=5)))
    ours, theirs = evaluate(ours_lm, manager, docs), evaluate(theirs_lm, manager, docs)
    for task in (CLOZE, ROLLING):
        pairs = [(a, b) for doc_a, doc_b in zip(ours["samples"][task], theirs["samples"][task], strict=True)
                 for a, b in zip(zip(doc_a["arguments"], doc_a["resps"], strict=True),
                                 zip(doc_b["arguments"], doc_b["resps"], strict=True), strict=True)]
        assert len(pairs) == docs * (4 if task == CLOZE else 1)
        for (args, [mine]), (args_b, [reference]) in pairs:
            assert args == args_b
            if task == CLOZE:
                context, continuation = args
                n = len(ours_lm._encode_pair(context, continuation)[1])
                assert abs(mine[0] - reference[0]) <= PER_TOKEN * n, args
                assert mine[1] == reference[1], args
            else:
                n = len(ours_lm.tok_encode(args[0]))
                assert abs(mine - reference) <= PER_TOKEN * n
        for key, value in theirs["results"][task].items():
            if "," in key and "stderr" not in key:
                assert ours["results"][task][key] == pytest.approx(value, rel=5e-5), (task, key)


def test_a_few_documents_score_as_lm_evals_own_hf_model(models, persuasion, tmp_path):
    check_parity(models, persuasion, tmp_path, docs=3)


@pytest.mark.parity
def test_sixty_documents_score_as_lm_evals_own_hf_model(models, persuasion, tmp_path):
    check_parity(models, persuasion, tmp_path, docs=60)


def test_rolling_perplexity_task_and_lm_evals_rolling_agree(models, persuasion, tmp_path):
    """The perplexity task's ``window: rolling`` on a text and lm-eval's loglikelihood_rolling on one document
    of that text, at the same max length: the same windows, so the same word perplexity and bits per byte
    (lm-eval's word count is ``re.split(r"\\s+")``, which the task's ``word_count: lm-eval`` reproduces)."""
    ours_lm, _ = models
    text = next(d["text"] for d in rolling_docs(persuasion, 1000)
                if len(ours_lm.tok_encode(d["text"])) > 3 * MAX_LENGTH)  # several windows
    task = PerplexityTask(PerplexitySettings(type="perplexity", dataset="d", window="rolling", n_ctx=MAX_LENGTH))
    rows = {m.metric: m.value for m in task.run(ours_lm.harness_backend, Corpus("d", "text", text, "")).measurements}
    write_task(tmp_path, ROLLING, [{"text": text}], ROLLING_BODY)
    manager = TaskManager(include_path=str(tmp_path))
    results = lm_eval.simple_evaluate(model=ours_lm, tasks=[ROLLING], task_manager=manager, bootstrap_iters=0)
    lmeval = results["results"][ROLLING]
    assert rows["word_ppl"] == pytest.approx(lmeval["word_perplexity,none"], rel=1e-9)
    assert rows["bits_per_byte"] == pytest.approx(lmeval["bits_per_byte,none"], rel=1e-9)
    assert math.log2(lmeval["byte_perplexity,none"]) == pytest.approx(rows["bits_per_byte"], rel=1e-9)
