"""Rollouts: sample G completions per prompt with the compiled generator and lay them out.

One generation batch is P prompts x G completions, group after group (row i is a completion
of prompt i // G). Every row is prompt + completion, right-padded to one fixed length
`max_prompt_length + max_new_tokens + 1`, so the train step and the log-prob passes trace
once. A completion that ended on an end token keeps that token (the model learns to stop);
one cut at `max_new_tokens` is "truncated".

Example:
```python
from kzoo.alignment.rollout import encode_prompts, sample_groups
ids = encode_prompts(["07+13="], tokenizer, max_prompt_length=8)
batch = sample_groups(policy, tokenizer, ids, group_size=4, max_new_tokens=3, seed=0)
batch.token_ids.shape   # (4, 12)
```
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from kzoo.data.conversation import _text_encoder, chat_template_of
from kzoo.data.instruction import get_template
from kzoo.tokenizers.chat_template import render_chat_template


def encode_prompts(prompts: list, tokenizer, max_prompt_length: int,
                   template: str = "raw", columns: dict | None = None) -> list[np.ndarray]:
    """Token ids of each prompt, cut to the last `max_prompt_length` tokens.

    Args:
        prompts: list[str | list[dict]]. strings, or chat messages (rendered with the
            tokenizer's chat template and the assistant header, as TRL does).
        tokenizer: a kzoo tokenizer.
        max_prompt_length: int. longer prompts keep their end (TRL's left truncation).
        template: str. for string prompts: "raw" (as they are), "chat" (a user turn in the
            chat template), or a `kzoo.data.instruction` template name / format string.
        columns: dict or None. the prompt file's columns: with `instruction` (and `input`)
            columns, a template renders those fields (Alpaca records, as SFT renders them).
    """
    encode_text = _text_encoder(tokenizer)
    formatter = None if template in ("raw", "chat") else get_template(template)
    out = []
    fields = columns if columns and "instruction" in columns else None
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, list) or template == "chat":
            messages = prompt if isinstance(prompt, list) else [
                {"role": "user", "content": prompt}]
            source, variables = chat_template_of(tokenizer)
            ids = encode_text(render_chat_template(source, messages, add_generation_prompt=True,
                                                   **variables))
        else:
            record = ({"instruction": fields["instruction"][i],
                       "input": (fields.get("input") or [""] * len(prompts))[i]}
                      if fields else {"prompt": prompt})
            text = prompt if formatter is None else formatter.format(record)
            ids = np.asarray(tokenizer.encode(text), np.int32)
        if len(ids) == 0:
            raise ValueError(f"prompt {prompt!r:.60} encodes to no tokens")
        out.append(ids[-max_prompt_length:])
    return out


@dataclass
class GenerationBatch:
    """G completions of each of P prompts, laid out for training.

    Attributes:
        token_ids: int32 (rows, L). prompt + completion (+ its end token), right-padded.
        completion_mask: float32 (rows, L). 1.0 on completion tokens (end token included).
        prompt_mask: float32 (rows, L). 1.0 on prompt tokens.
        completion_ids: list[list[int]]. each completion's ids, end token excluded.
        finished: bool (rows,). the completion ended on an end token (else truncated).
        texts: list[str]. decoded completions.
        seconds: float. wall time of the generation call.
        new_tokens: int. tokens the generator produced (the throughput numerator).
    """

    token_ids: np.ndarray
    completion_mask: np.ndarray
    prompt_mask: np.ndarray
    completion_ids: list
    finished: np.ndarray
    texts: list
    seconds: float
    new_tokens: int

    @property
    def lengths(self) -> np.ndarray:
        """Completion lengths in tokens, end token included (what the loss sees)."""
        return self.completion_mask.sum(axis=1).astype(np.int32)


def sample_groups(policy, tokenizer, prompt_ids: list[np.ndarray], group_size: int,
                  max_new_tokens: int, max_prompt_length: int | None = None,
                  sampler: str | dict = "random", seed: int | None = None,
                  jit_compile: bool = True) -> GenerationBatch:
    """Sample `group_size` completions of every prompt with the compiled, KV-cached generator.

    Args:
        policy: CausalLM. the model sampled (its current weights).
        tokenizer: kzoo tokenizer. decodes completions; its `stop_token_ids` end them.
        prompt_ids: list[np.ndarray]. encoded prompts (`encode_prompts`).
        group_size: int. G.
        max_new_tokens: int. completion length limit.
        max_prompt_length: int or None. fixes the row length (defaults to the longest prompt).
        sampler: str or dict. a `kzoo.samplers` name or config (e.g. {"class_name": ...} or
            "random"); a temperature must match the train step's.
        seed: int or None. makes the draw reproducible.
        jit_compile: bool. XLA-compile the generator (False: plain graphs, faster to build for
            tiny models and very short completions).
    """
    from kzoo.generation import get_generator

    stops = list(tokenizer.stop_token_ids)
    rows_prompts = [p for p in prompt_ids for _ in range(group_size)]
    generator = get_generator(policy, sampler=sampler, jit_compile=jit_compile)
    start = time.perf_counter()
    result = generator.generate([p.tolist() for p in rows_prompts],
                                max_new_tokens=max_new_tokens, stop_token_ids=stops, seed=seed)
    seconds = time.perf_counter() - start
    width = (max_prompt_length or max(len(p) for p in prompt_ids)) + max_new_tokens + 1
    n = len(rows_prompts)
    token_ids = np.zeros((n, width), np.int32)
    mask = np.zeros((n, width), np.float32)
    prompt_mask = np.zeros((n, width), np.float32)
    finished = np.array([r == "stop" for r in result.finish_reasons])
    completion_ids = [list(ids) for ids in result.token_ids]
    for i, (prompt, ids) in enumerate(zip(rows_prompts, completion_ids)):
        # The generator drops the stop token; the loss needs it (that is how stopping is learnt).
        completion = ids + [stops[0]] if finished[i] else ids
        row = np.concatenate([prompt, np.asarray(completion, np.int32)])
        token_ids[i, : len(row)] = row
        mask[i, len(prompt): len(row)] = 1.0
        prompt_mask[i, : len(prompt)] = 1.0
    return GenerationBatch(
        token_ids=token_ids, completion_mask=mask, prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        finished=finished, texts=[tokenizer.decode(ids) for ids in completion_ids],
        seconds=seconds, new_tokens=int(sum(len(ids) for ids in completion_ids)
                                        + finished.sum()))


def predict_rows(scorer, token_ids: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """`scorer.predict_on_batch` over `token_ids` in slices: (rows, L - 1) float32."""
    n = len(token_ids)
    size = min(batch_size, n)
    parts = []
    for s in range(0, n, size):
        chunk = token_ids[s: s + size]
        # Pad the last slice to the same shape: one trace of the predict function.
        padded = np.concatenate([chunk, np.zeros((size - len(chunk), chunk.shape[1]),
                                                 chunk.dtype)]) if len(chunk) < size else chunk
        parts.append(np.asarray(scorer.predict_on_batch(padded))[: len(chunk)])
    return np.concatenate(parts).astype(np.float32)


__all__ = ["GenerationBatch", "encode_prompts", "predict_rows", "sample_groups"]
