"""One request's choice on its way through `kzoo serve`: its settings, its tokens so far, and
the bookkeeping every decoding path shares (stop tokens and strings, `max_tokens`, the text that
is safe to stream, the events its client receives).

The batched rows of `kzoo.serve.engine` and the exclusive lane of `kzoo.serve.modes` both call
`record` per token, so a request's text, stops and events do not depend on which one ran it.

Example:
```python
from kzoo.serve.sequence import SamplingParams, Sequence, record
from kzoo.tokenizers import ByteTokenizer
seq = Sequence([72, 105], SamplingParams(max_tokens=2), sink=print)
record(seq, ByteTokenizer(), 33, 0.0, [])   # None: prints {"type": "token", "text": "!", ...}
```
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    """One request's settings (already checked by `kzoo.serve.protocol`)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    stop: list = field(default_factory=list)  # stop strings
    stop_token_ids: list = field(default_factory=list)
    logprobs: int | None = None  # top-N alternatives per token, or None
    echo: bool = False  # also score the prompt (its log-probabilities)
    penalty_alpha: float | None = None  # contrastive search (with top_k candidates), or None


class Sequence:
    """One choice of one prompt, from admission to its last token.

    Args:
        prompt_ids: list[int]. the prompt.
        params: SamplingParams.
        sink: callable. receives each event dict (called from the engine thread).
        choice: int. which of a request's `n` choices (it changes the random numbers).
    """

    def __init__(self, prompt_ids, params: SamplingParams, sink, choice: int = 0):
        self.prompt_ids, self.params = list(prompt_ids), params
        self.sink, self.choice = sink, choice
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.ids, self.logprobs, self.tops = [], [], []
        self.prompt_logprobs, self.prompt_tops = None, None
        self.shown, self.full_text, self.finish_reason = "", "", None
        self.sent = 0  # tokens already sent to the client in "token" events
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        """Free the slot at the next step boundary (thread-safe)."""
        self.cancelled.set()


def record(seq: Sequence, tokenizer, token: int, logp: float, tops: list) -> str | None:
    """Sequence `seq` drew `token`: keep it, send the text that is safe to show, and return
    why it ended ("stop", "length") or None. Shared by the batched rows and the lane of
    `kzoo.serve.modes`."""
    params = seq.params
    if token in params.stop_token_ids:
        return "stop"
    seq.ids.append(token)
    seq.logprobs.append(logp)
    seq.tops.append(tops)
    text = tokenizer.decode(seq.ids)
    hits = [i for i in (text.find(s) for s in params.stop) if i >= 0]
    if hits:
        seq.full_text = text[:min(hits)]
        return "stop"
    seq.full_text = text
    if len(seq.ids) >= params.max_tokens:
        return "length"
    # hold back an incomplete character and a tail that may grow into a stop string
    safe = len(text) - (1 if text.endswith("\ufffd") else 0)
    safe -= _pending_stop(text[:safe], params.stop)
    if safe > len(seq.shown):
        seq.sink({"type": "token", "text": text[len(seq.shown):safe], "entries": _entries(seq)})
        seq.shown = text[:safe]
    return None


def done_event(seq: Sequence) -> dict:
    """The "done" event of a finished sequence (its `finish_reason` set)."""
    text = seq.full_text
    return {"type": "done", "text": text, "delta": text[len(seq.shown):],
            "entries": _entries(seq),
            "finish_reason": seq.finish_reason, "token_ids": seq.ids,
            "logprobs": seq.logprobs, "tops": seq.tops, "prompt_ids": seq.prompt_ids,
            "prompt_logprobs": seq.prompt_logprobs, "prompt_tops": seq.prompt_tops}


def _entries(seq: Sequence) -> list:
    """(id, logprob, tops) of the tokens not yet sent to the client; marks them sent."""
    new = list(zip(seq.ids, seq.logprobs, seq.tops))[seq.sent:]
    seq.sent = len(seq.ids)
    return new


def _pending_stop(text: str, stops: list) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best
