"""Log-likelihoods of token continuations through one compiled forward per shape bucket.

Requests with the same model input share a row (the one-token answers of a multiple-choice
question, as lm-eval's `hf` model does). Rows are sorted longest first, cut into batches of
`batch_size` rows and right-padded to a bucketed length (`length_bucket`, capped at the
model's context); the last batch is filled up with copies of a row, so that every batch of
one length reuses the same program. The program returns, per position and request of the
row, the log-probability of the next token and whether it is the argmax: only
(batch, length, K) numbers leave the device, never the (batch, length, vocab) logits.

Example:
```python
from kzoo.eval.scoring import LoglikelihoodScorer
from kzoo.models import CausalLM
scorer = LoglikelihoodScorer(CausalLM.from_preset("gpt_nano", vocab_size=300), batch_size=4)
scorer.score([([1, 2, 3], [4, 5]), ([7], [8])])   # [(sum logprob, is_greedy), ...]
```
"""

from __future__ import annotations

import logging

import numpy as np
from keras import ops

from kzoo import backend
from kzoo.generation.inputs import bucket, fine_bucket

logger = logging.getLogger("kzoo.eval")


# The scorer's padded lengths: fine buckets (see `kzoo.generation.inputs.fine_bucket`).
length_bucket = fine_bucket


class LoglikelihoodScorer:
    """Sum of log p(continuation | context) and the greedy flag, batched and bucketed.

    Args:
        model: kzoo `CausalLM`. the model scored.
        batch_size: int. rows per forward.
        max_length: int or None. tokens the model sees at once; default its context.
        jit_compile: bool. XLA on TensorFlow and JAX (PyTorch runs eagerly, without autograd).

    Example:
    ```python
    scorer.score([([1, 2], [3])])[0]   # (-5.71..., False)
    scorer.trace_count                 # programs traced so far (one per bucket shape)
    ```
    """

    def __init__(self, model, batch_size: int = 8, max_length: int | None = None,
                 jit_compile: bool = True):
        self.model = model
        self.batch_size = int(batch_size)
        self.max_length = int(max_length or model.max_sequence_length)
        self.trace_count = 0
        self.warned = False
        self.warned_long = False
        self._forward = backend.compile_function(
            self._program, lambda: model.variables, jit_compile, on_trace=self._count)

    def _count(self):
        self.trace_count += 1

    def _program(self, token_ids, targets):
        # targets (batch, length, K): K requests share a row when only their last token differs
        logits = ops.cast(self.model(token_ids), "float32")
        logp = ops.log_softmax(logits, axis=-1)
        picked = ops.take_along_axis(logp, targets, axis=-1)
        best = ops.cast(ops.argmax(logits, axis=-1), "int32")
        return picked, ops.equal(ops.expand_dims(best, -1), targets)

    def fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], int]:
        """The model's input and its length: `context + continuation` without its last token,
        cut from the left to `max_length` tokens, as lm-eval's `hf` model does (one warning
        the first time a request is cut)."""
        total = len(context) + len(continuation)
        if total > self.max_length + 1 and not self.warned:
            logger.warning(
                "a request of %d tokens (context %d + continuation %d) is longer than the "
                "model's context of %d; its first %d tokens are cut (from the left, as lm-eval's "
                "hf model does); this is said once", total, len(context), len(continuation),
                self.max_length, total - self.max_length - 1)
            self.warned = True
        tokens = (list(context) + list(continuation))[-(self.max_length + 1):][:-1]
        return tokens, len(tokens)

    def score(self, requests, progress=None) -> list[tuple[float, bool]]:
        """(sum of log p, whether every continuation token is the argmax) per request.

        Requests whose model input is the same (the choices of a multiple-choice question
        whose answers are one token, say) share one row of the batch. A continuation longer
        than the model's context is scored in pieces of `max_length` tokens, each after the
        tokens before it (cut from the left), and the pieces summed: the log-likelihood the
        model's window allows (lm-eval's `hf` model has no answer for it; said once).

        Args:
            requests: list of (context_ids, continuation_ids). both non-empty.
            progress: callable or None. called with the number of requests just scored.
        """
        pieces, owners = [], []
        for index, (context, continuation) in enumerate(requests):
            if not continuation:
                raise ValueError("a log-likelihood request has an empty continuation")
            if len(continuation) > self.max_length and not self.warned_long:
                logger.warning(
                    "a continuation of %d tokens is longer than the model's context of %d; it "
                    "is scored in pieces of %d tokens, each after the tokens before it; this "
                    "is said once", len(continuation), self.max_length, self.max_length)
                self.warned_long = True
            for start in range(0, len(continuation), self.max_length):
                pieces.append((list(context) + list(continuation[:start]),
                               continuation[start:start + self.max_length]))
                owners.append(index)
        last = {owner: i for i, owner in enumerate(owners)}  # a request's last piece

        def done(indices):  # the progress of requests, not of pieces
            if progress is not None:
                progress(sum(last[owners[i]] == i for i in indices))
        totals = [[0.0, True] for _ in requests]
        for owner, (logp, greedy) in zip(owners, self._score(pieces, done)):
            totals[owner][0] += logp
            totals[owner][1] = totals[owner][1] and greedy
        return [(logp, greedy) for logp, greedy in totals]

    def _score(self, requests, done) -> list[tuple[float, bool]]:
        rows: dict[tuple, list] = {}  # model input -> [(request index, last target, cont len)]
        for index, (context, continuation) in enumerate(requests):
            tokens, _ = self.fit(context, continuation)
            rows.setdefault(tuple(tokens), []).append((index, int(continuation[-1]),
                                                       len(continuation)))
        order = sorted(rows, key=lambda tokens: -len(tokens))
        # Fewer rows than a batch keep their own count; every batch then has as many rows,
        # and as many targets per row (K), so one program serves each length bucket.
        size = min(self.batch_size, len(order))
        width = bucket(max(len(members) for members in rows.values()), minimum=1)
        results: list = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            for index, answer in self._batch([(t, rows[t]) for t in chunk], size, width):
                results[index] = answer
            done([member[0] for t in chunk for member in rows[t]])
        return results

    def _batch(self, chunk, size: int, width: int):
        length = min(length_bucket(max(len(tokens) for tokens, _ in chunk)), self.max_length)
        token_ids = np.zeros((size, length), np.int32)
        targets = np.zeros((size, length, width), np.int32)
        for r in range(size):
            tokens, members = chunk[min(r, len(chunk) - 1)]  # filler rows repeat the last one
            n = len(tokens)
            token_ids[r, :n] = tokens
            targets[r, :n - 1] = np.asarray(tokens[1:], np.int32)[:, None]
            for k in range(width):
                targets[r, n - 1, k] = members[min(k, len(members) - 1)][1]
        picked, greedy = self._forward(ops.convert_to_tensor(token_ids),
                                       ops.convert_to_tensor(targets))
        picked, greedy = ops.convert_to_numpy(picked), ops.convert_to_numpy(greedy)
        for r, (tokens, members) in enumerate(chunk):
            for k, (index, _, cont_len) in enumerate(members):
                span = slice(len(tokens) - cont_len, len(tokens))
                yield index, (float(picked[r, span, k].astype(np.float64).sum()),
                              bool(greedy[r, span, k].all()))
