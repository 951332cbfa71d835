"""The exclusive lane of `kzoo serve`: decoding modes that do not fit the batch's lockstep step.

- contrastive search (a request's `penalty_alpha` with `top_k`, `kzoo.generation.contrastive`):
  each step scores `top_k` candidates with a forward of their own, and keeps their hidden
  states, which the batched step has no room for;
- speculative decoding (`kzoo serve --draft-model PATH` or `--prompt-lookup K`,
  `kzoo.generation.speculative`): each step checks k drafts in one forward of k + 1 tokens and
  keeps 1 to k + 1 of them, a different count per request, where the batch advances every row
  by one slot.

Such a sequence runs through the library's own compiled generator (`Generator.stream`, as
`kzoo chat` does; its tokens are `kzoo.generation.generate`'s), one sequence at a time. The
engine's thread advances the lane between two steps of the batch, by one token (with drafts, up
to the k + 1 of one verification), so plain requests keep being decoded meanwhile; sequences
that wait for the lane wait in its own queue (counted in `--max-queue`). Stops, `max_tokens`,
streamed text and the events its client receives are those of a batched row
(`kzoo.serve.sequence.record`), and a cancelled sequence (its client went away) is dropped at
the next token.

On a server with a draft mode, every request the drafts can serve rides the lane: greedy
(the tokens of plain greedy decoding) and sampled ones (the same distribution; each distinct
temperature / top-k / top-p / min-p compiles its programs once, the last `GENERATORS` are
kept). Requests asking for `logprobs` or `echo` are decoded by the batch: the library's
streaming drafts report no alternatives.

Example:
```python
from kzoo.models import CausalLM
from kzoo.serve.engine import Engine
from kzoo.serve.sequence import SamplingParams, Sequence
from kzoo.tokenizers import ByteTokenizer
model, tokenizer = CausalLM.from_preset("gpt_nano", vocab_size=257), ByteTokenizer()
engine = Engine(model, tokenizer, slots=4, draft="prompt_lookup", num_draft_tokens=4)
engine.lane.wants(Sequence([5, 6], SamplingParams(temperature=0.0), sink=print))   # True
```
"""

from __future__ import annotations

import collections

import numpy as np

from kzoo import samplers
from kzoo.generation import Generator
from kzoo.serve.sequence import SamplingParams, Sequence, done_event, record

GENERATORS = 8  # sampler settings whose compiled programs the lane keeps


class Lane:
    """One sequence at a time through `kzoo.generation.Generator.stream`, a token per call.

    Args:
        model: kzoo `CausalLM`.
        tokenizer: kzoo tokenizer.
        weights: None or `GenerationWeights`. the batch's decode weights (shared, not copied).
        jit_compile: bool. XLA on TensorFlow and JAX.
        draft: None, "prompt_lookup" or a kzoo `CausalLM`. the server's draft mode.
        num_draft_tokens: int. drafts per verification step.
        score: callable. `score(seq)` fills the prompt's log-probabilities (`echo`).
        ended: callable. told once per sequence that leaves the lane (done, failed, cancelled).

    Attributes:
        pending: deque of `Sequence`. waiting for the lane (the engine appends under its lock).
        active: int. 1 while a sequence is being decoded, else 0.
        decoded: int. tokens decoded here so far.
    """

    def __init__(self, model, tokenizer, weights=None, jit_compile=True, draft=None,
                 num_draft_tokens: int = 4, score=None, ended=None):
        self.model, self.tokenizer, self.weights = model, tokenizer, weights
        self.jit_compile, self.draft, self.num_draft_tokens = jit_compile, draft, num_draft_tokens
        self._score, self._ended = score, ended or (lambda: None)
        self.pending: collections.deque = collections.deque()
        self.current: Sequence | None = None
        self._tokens = None
        self.decoded = 0
        self._burst = 1  # tokens a call of `advance` may take
        self._generators: collections.OrderedDict = collections.OrderedDict()
        if draft is not None:  # refuses a bad draft now (one line), not at the first request
            self.generator(SamplingParams(temperature=0.0))

    @property
    def active(self) -> int:
        return int(self.current is not None)

    def wants(self, seq: Sequence) -> bool:
        """Whether `seq` is decoded here rather than in the batch."""
        params = seq.params
        if params.max_tokens < 1:  # echo alone: nothing to decode
            return False
        if params.penalty_alpha is not None:
            return True
        return self.draft is not None and params.logprobs is None and not params.echo

    def generator(self, params) -> Generator:
        """The compiled generator for `params`' mode and sampler settings (made once, kept)."""
        if params.penalty_alpha is not None:
            key = ("contrastive", params.penalty_alpha, params.top_k)
        elif params.temperature <= 0:
            key = ("greedy",)
        else:
            key = ("sample", params.temperature, params.top_k, params.top_p, params.min_p)
        if key in self._generators:
            self._generators.move_to_end(key)
            return self._generators[key]
        draft = self.draft
        if key[0] == "contrastive":
            sampler, draft = samplers.get("contrastive", penalty_alpha=key[1], top_k=key[2]), None
        elif key[0] == "greedy":
            sampler = "greedy"
        else:
            sampler = samplers.get("sampler", temperature=key[1], top_k=key[2] or None,
                                   top_p=key[3] if key[3] < 1.0 else None,
                                   min_p=key[4] if key[4] > 0.0 else None)
        made = Generator(self.model, sampler, jit_compile=self.jit_compile, weights=self.weights,
                         draft=draft, num_draft_tokens=self.num_draft_tokens)
        self._generators[key] = made
        while len(self._generators) > GENERATORS:
            self._generators.popitem(last=False)
        return made

    def advance(self) -> None:
        """Decode the next token of the current sequence (starting the next waiting one first);
        with drafts, up to k + 1 tokens: a verification's accepted tokens come out together, and
        one a call would hold them back behind the batch's steps."""
        if self.current is None and not self._begin():
            return
        for _ in range(self._burst):
            if not self._next_token():
                return

    def _next_token(self) -> bool:
        """One token of the current sequence; False once it has left the lane."""
        seq = self.current
        if seq.cancelled.is_set():
            self._leave()
            return False
        try:
            token = next(self._tokens, None)
            self.decoded += token is not None
            reason = ("length" if token is None
                      else record(seq, self.tokenizer, int(token), 0.0, []))
        except Exception as error:  # noqa: BLE001  this request alone fails
            self._leave({"type": "error", "message": _failure(error)})
            return False
        if reason is not None:
            seq.finish_reason = reason
            self._leave(done_event(seq))
            return False
        return True

    def drop(self) -> list:
        """Every sequence here (the current one first), removed without events."""
        seqs = ([self.current] if self.current is not None else []) + list(self.pending)
        self.pending.clear()
        self._close()
        return seqs

    def _begin(self) -> bool:
        while self.pending:
            seq = self.pending.popleft()
            if seq.cancelled.is_set():
                self._ended()
                continue
            try:
                if seq.params.echo:
                    self._score(seq)
                generator = self.generator(seq.params)
                tokens = generator.stream(seq.prompt_ids, max_new_tokens=seq.params.max_tokens,
                                          seed=_seed(seq))
            except Exception as error:  # noqa: BLE001  this request alone fails
                seq.sink({"type": "error", "message": _failure(error)})
                self._ended()
                continue
            self.current, self._tokens = seq, tokens
            self._burst = 1 if generator.draft is None else generator.num_draft_tokens + 1
            return True
        return False

    def _leave(self, event=None) -> None:
        seq = self.current
        self._close()
        if event is not None:
            seq.sink(event)
        self._ended()

    def _close(self) -> None:
        if self._tokens is not None:
            self._tokens.close()  # its compiled state (the KV cache) is freed now
        self.current, self._tokens = None, None


def _seed(seq: Sequence) -> int:
    """The sampler's seed for this choice of the request (a sampler's seed state is 32-bit)."""
    return int(np.random.default_rng([seq.seed & (2**63 - 1), seq.choice]).integers(2**31))


def _failure(error: Exception) -> str:
    if isinstance(error, ValueError):  # the library's one-line refusal says what to change
        return " ".join(str(error).split())
    return f"internal error in the model thread ({type(error).__name__}: {error})"
