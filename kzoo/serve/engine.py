"""`Engine`: continuous batching over a fixed set of slots in one KV cache, run by one thread.

The cache has `slots` rows of `L` (the model's context) cache slots, in the compiled shapes of
the model's own `init_cache`. All rows write their next token at one shared slot `t`; a row's
tokens are the contiguous slots `[t - count, t)` (its own padding mask), and every token carries
its own position, so where a row sits in the cache does not change what it computes. The
compiled programs are in `kzoo.serve.programs` (the decoder of `kzoo.generation`; no second
implementation of the model):

- prefill (one per power-of-two prompt length P): one prompt into a fresh P-slot cache, written
  into its row of the batch's cache to end at `t`, and the first token picked;
- step: one token for every row at slot `t`, each row sampled with its own settings
  (`kzoo.serve.sampling.pick`, in the variant `sampling.plan` chooses for the rows: the
  vocabulary is sorted only when a row uses top-p);
- shift: every row's slots moved by the same amount, when `t` reaches `L` (left, by the free
  room) or a new prompt's P slots do not fit before `t` (right); rare.

Every step runs all `slots` rows, busy or not: a program over fewer rows would multiply by
matrices of another height, which XLA on CPU (JAX) rounds differently in the last bits, and
a request's tokens would then depend on how many others are running.

A request waiting in the queue is admitted at the next step boundary when a slot is free; a
finished, stopped or cancelled sequence frees its slot at that boundary. The ASGI handlers talk
to the thread through `submit` and each sequence's event queue.

Contrastive search (`penalty_alpha`) and, when the engine has a `draft`, speculative decoding
do not fit the lockstep step: such sequences go to the exclusive lane of `kzoo.serve.modes`,
one at a time, which this thread advances by a token (or a verification's tokens) between
two steps of the batch.

Example:
```python
engine = Engine(model, tokenizer, slots=4)
engine.start()
seq = Sequence([5, 6, 7], SamplingParams(max_tokens=8, seed=0), sink=print)
engine.submit([seq])      # events: {"type": "token", ...} ..., then {"type": "done", ...}
engine.stop()
```
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np
from keras import ops

from kzoo.generation import Generator
from kzoo.generation.inputs import bucket, fine_bucket
from kzoo.serve import sampling
from kzoo.serve.modes import Lane
from kzoo.serve.programs import Programs
from kzoo.serve.sequence import SamplingParams, Sequence, done_event, record

__all__ = ["Engine", "SamplingParams", "Sequence"]  # the last two live in kzoo.serve.sequence


class Engine:
    """The slots, the KV cache and the thread that owns the model.

    Args:
        model: kzoo `CausalLM`.
        tokenizer: kzoo tokenizer (texts of tokens, stop strings).
        slots: int. rows decoded together.
        weights: None, "float32", "bfloat16" or "int8". the generation weights
            (`kzoo.generation.Generator`'s `weights=`).
        jit_compile: bool. XLA on TensorFlow and JAX.
        max_queue: int. sequences waiting for a slot (or the lane) before `submit` refuses more.
        draft: None, "prompt_lookup" or a kzoo `CausalLM`. speculative decoding for every
            request it can serve (`kzoo.serve.modes.Lane`).
        num_draft_tokens: int. >= 1; drafts per verification step.

    Attributes:
        steps: int. decode steps run so far (every active row advances in each).
        active: int. slots in use now, the lane's sequence included (the gauge: 0 when idle).
    """

    def __init__(self, model, tokenizer, slots: int = 8, weights=None, jit_compile=True,
                 max_queue: int = 64, draft=None, num_draft_tokens: int = 4):
        self.model, self.tokenizer = model, tokenizer
        self.slots, self.length = int(slots), int(model.max_sequence_length)
        self.max_queue = int(max_queue)
        self.decoder = Generator(model, weights=weights, jit_compile=jit_compile).decoder
        self.jit_compile = jit_compile
        self.programs = Programs(model, self.decoder, jit_compile)
        self.steps, self.prefills = 0, 0
        self._rows: list[Sequence | None] = [None] * self.slots
        self._counts = np.zeros(self.slots, np.int64)  # tokens of each row in the cache
        self._tokens = np.zeros(self.slots, np.int32)  # each row's token to feed next
        self._t = 0  # the slot the next step writes
        self._pending: collections.deque = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = None
        self._open = 0  # sequences submitted and not yet ended (done, failed or cancelled)
        # the lane shares the weights snapshot (int8 / bf16) the batch decodes with
        self.lane = Lane(model, tokenizer, getattr(self.decoder, "weights", None), jit_compile,
                         draft, num_draft_tokens, score=self._score_prompt, ended=self._ended)

    # ------------------------------------------------------------------ the public side
    @property
    def active(self) -> int:
        return self._rows_active + self.lane.active

    @property
    def _rows_active(self) -> int:
        return sum(r is not None for r in self._rows)

    @property
    def trace_count(self) -> int:
        """Programs traced so far."""
        return self.programs.trace_count

    @property
    def queued(self) -> int:
        return len(self._pending) + len(self.lane.pending)

    def start(self) -> None:
        """Compile the step program and start the model thread."""
        self._prepared = self.programs.prepare()()
        self._cache = self.model.init_cache(self.slots, self.length)
        self._thread = threading.Thread(target=self._run, name="kzoo-serve-engine", daemon=True)
        self._thread.start()

    def submit(self, sequences: list[Sequence]) -> bool:
        """Queue `sequences` (one request's, together); False when the queue is full."""
        with self._wake:
            if self._stopping or self.queued + len(sequences) > self.max_queue:
                return False
            for seq in sequences:
                (self.lane.pending if self.lane.wants(seq) else self._pending).append(seq)
            self._open += len(sequences)
            self._wake.notify()
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel what is queued or running (each gets an error event) and end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._pending and not self.active \
                        and not self.lane.pending:
                    self._wake.wait(0.5)
                if self._stopping:
                    break
            try:
                self._free_cancelled()
                self._admit()
                if self._rows_active:
                    self._step()
                self.lane.advance()  # one token of the lane's sequence, if it has one
            except Exception as error:  # noqa: BLE001  a bug must not leave requests hanging
                self._fail_all(f"internal error in the model thread ({type(error).__name__}: "
                               f"{error})")
        self._fail_all("the server is shutting down")

    def _fail_all(self, message: str) -> None:
        with self._wake:
            waiting, self._pending = list(self._pending), collections.deque()
        for seq in waiting + [s for s in self._rows if s is not None] + self.lane.drop():
            seq.sink({"type": "error", "message": message})
            self._ended()
        self._rows = [None] * self.slots
        if not self._stopping:  # a failed program may have consumed the donated cache
            self._cache, self._t = self.model.init_cache(self.slots, self.length), 0

    def _free_cancelled(self) -> None:
        for row, seq in enumerate(self._rows):
            if seq is not None and seq.cancelled.is_set():
                self._rows[row] = None
                self._ended()

    def _admit(self) -> None:
        while True:
            free = [r for r, s in enumerate(self._rows) if s is None]
            with self._wake:
                if not self._pending:
                    return
                if self._pending[0].params.max_tokens > 0 and not free:
                    return
                seq = self._pending.popleft()
            if seq.cancelled.is_set():
                self._ended()
                continue
            try:
                if seq.params.echo:
                    self._score_prompt(seq)
                if seq.params.max_tokens == 0:
                    seq.finish_reason = "length"
                    seq.sink(done_event(seq))
                    self._ended()
                    continue
                self._prefill(seq, free[0])
            except Exception as error:
                if seq in self._rows:
                    raise  # in a slot: `_run` fails every row
                seq.sink({"type": "error", "message": f"internal error in the model thread "
                          f"({type(error).__name__}: {error})"})
                self._ended()

    def _score_prompt(self, seq: Sequence) -> None:
        """The log-probability of each prompt token after the ones before it (None first)."""
        ids = seq.prompt_ids
        width = min(fine_bucket(len(ids)), self.length)
        token_ids = np.zeros((1, width), np.int32)
        token_ids[0, :len(ids)] = ids
        targets = np.zeros((1, width), np.int32)
        targets[0, :len(ids) - 1] = ids[1:]
        picked, top_ids, top_logps = self.programs.score(width)(
            _tensor(token_ids), _tensor(targets))
        picked, top_ids, top_logps = (ops.convert_to_numpy(x)[0] for x in (picked, top_ids,
                                                                           top_logps))
        seq.prompt_logprobs = [None] + [float(x) for x in picked[:len(ids) - 1]]
        seq.prompt_tops = [None] + [list(zip(top_ids[i].tolist(), top_logps[i].tolist()))
                                    for i in range(len(ids) - 1)]

    def _settings(self, seqs: list[Sequence | None]) -> tuple[dict, tuple]:
        """The rows' setting tensors and the `pick` variant they need (`sampling.plan`)."""
        rows = [None if s is None else {
            "temperature": s.params.temperature, "top_k": s.params.top_k,
            "top_p": s.params.top_p, "min_p": s.params.min_p,
            "u": sampling.uniform(s.seed, s.choice, len(s.ids))} for s in seqs]
        arrays = sampling.settings_arrays(rows)
        return ({k: _tensor(v) for k, v in arrays.items()},
                sampling.plan(rows, self.model.vocab_size))

    def _shift(self, shift: int) -> None:
        self._cache = self.programs.shift()(self._cache, _tensor(np.int32(shift)))
        self._t += shift

    def _prefill(self, seq: Sequence, row: int) -> None:
        n = len(seq.prompt_ids)
        slots = min(bucket(n), self.length)
        if self._t < slots:  # the prompt's slots end at slot t: move every row right for room
            self._shift(slots - self._t)
        token_ids = np.zeros((1, slots), np.int32)
        token_ids[0, slots - n:] = seq.prompt_ids
        # one prefill variant (it sorts one row: cheap) rather than a program per `plan`
        settings, _ = self._settings([seq])
        self._cache, token, logp, top_ids, top_logps = self.programs.prefill(slots)(
            self._prepared, self._cache, _tensor(token_ids), _tensor(np.array([n], np.int32)),
            _tensor(np.int32(row)), _tensor(np.int32(self._t)), settings)
        self.prefills += 1
        self._rows[row], self._counts[row] = seq, n
        self._take(row, *(ops.convert_to_numpy(x)[0] for x in (token, logp, top_ids, top_logps)))

    def _step(self) -> None:
        if self._t >= self.length:  # no slot left on the right: move every row left
            used = max(int(self._counts[r]) for r, s in enumerate(self._rows) if s is not None)
            self._shift(-(self.length - used))
        slots = np.arange(self.length)
        counts = np.where([s is not None for s in self._rows], self._counts, 0)
        # a row sees its own slots and the one written now (an empty row: that one only)
        mask = (slots[None, :] >= self._t - counts[:, None]) & (slots[None, :] <= self._t)
        settings, variant = self._settings(self._rows)
        self._cache, tokens, logps, top_ids, top_logps = self.programs.step(*variant)(
            self._prepared, self._cache, _tensor(self._tokens), _tensor(counts.astype(np.int32)),
            _tensor(mask), _tensor(np.int32(self._t)), settings)
        self.steps += 1
        self._t += 1
        tokens, logps, top_ids, top_logps = (ops.convert_to_numpy(x)
                                             for x in (tokens, logps, top_ids, top_logps))
        for row, seq in enumerate(self._rows):
            if seq is not None:
                self._counts[row] += 1
                self._take(row, tokens[row], logps[row], top_ids[row], top_logps[row])

    # ------------------------------------------------------------------ per token
    def _take(self, row: int, *drawn) -> None:
        """Row `row` drew a token: record it, tell its client, free the row when it ends; a
        failure here (its text, its stop strings) ends that request alone."""
        try:
            self._record(row, *drawn)
        except Exception as error:  # noqa: BLE001  the other rows go on
            seq, self._rows[row] = self._rows[row], None
            if seq is not None:
                seq.sink({"type": "error", "message": f"internal error in the model thread "
                          f"({type(error).__name__}: {error})"})
                self._ended()

    def _record(self, row: int, token, logp, top_ids, top_logps) -> None:
        seq = self._rows[row]
        reason = record(seq, self.tokenizer, int(token), float(logp),
                        list(zip(top_ids.tolist(), top_logps.tolist())))
        if reason is not None:
            return self._finish(row, reason)
        self._tokens[row] = seq.ids[-1]

    def _finish(self, row: int, reason: str) -> None:
        seq = self._rows[row]
        self._rows[row] = None
        seq.finish_reason = reason
        seq.sink(done_event(seq))
        self._ended()

    def _ended(self) -> None:
        with self._wake:
            self._open -= 1

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted sequence has ended (for tests and shutdown)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self._open:
                return True
            time.sleep(0.01)
        return False


def _tensor(array):
    return ops.convert_to_tensor(np.asarray(array))
