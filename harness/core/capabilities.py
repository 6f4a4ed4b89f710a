"""What a backend can do, by name: tasks require capabilities and never ask for a backend by name."""

SCORE = "score"
#: full-vocabulary log-probabilities at scored positions (entropy, KL-divergence) and next-token logits
#: while generating (:meth:`Backend.logit_steps`, for the harness's sampler)
LOGITS = "logits"
GENERATE = "generate"
#: generation with a sampler the caller can seed (repeatable draws)
SEED = "seed"
#: beam search in the backend's own generation
BEAM = "beam"
#: several sequences generated at once from one prompt (``batch_size`` > 1 in the backend's own generation)
BATCH = "batch"

#: lm-eval's request kinds and the backend capabilities each needs: a continuation's log-likelihood is a score
#: and its is-greedy flag (lm-eval's ``acc`` of a ``loglikelihood`` task) needs the full rows
LMEVAL_NEEDS = {"loglikelihood": frozenset({SCORE, LOGITS}), "multiple_choice": frozenset({SCORE, LOGITS}),
                "loglikelihood_rolling": frozenset({SCORE}), "generate_until": frozenset({GENERATE})}


def lmeval_missing(backend_type: str, capabilities: frozenset[str], output_type: str) -> str | None:
    """Why a backend cannot serve lm-eval requests of ``output_type`` (None: it can)."""
    missing = LMEVAL_NEEDS[output_type] - capabilities
    if not missing:
        return None
    return (f"lm-eval {output_type} requests need capability {', '.join(sorted(missing))}, which backend "
            f"{backend_type} lacks")
