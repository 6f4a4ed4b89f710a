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
