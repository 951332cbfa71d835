"""`Generator`: compiled, KV-cached text generation for a kzoo `CausalLM` and one sampler."""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from keras import ops

from kzoo import backend
from kzoo import samplers as samplers_lib
from kzoo.generation import contrastive, drafts, loops, quantization, speculative
from kzoo.generation import inputs as inputs_lib
from kzoo.generation.decoders import ModelDecoder, PreparedDecoder, supports_prepared
from kzoo.samplers.sampler import seed_variables


@dataclass
class GenerationResult:
    """What `Generator.generate` returns, one entry per prompt.

    Attributes:
        prompt_token_ids: list[list[int]]. the prompts as the model saw them (after truncation).
        token_ids: list[list[int]]. new tokens, without the stop sequence that ended them.
        logprobs: list[list[float]] or None. log p(token | context) under the model's own
            distribution (temperature 1, no filtering), one per new token, stop tokens excluded.
        finish_reasons: list[str]. "stop" (hit a stop token/sequence) or "length".
        texts: list[str] or None. decoded new tokens, when a tokenizer was given.
        stats: dict or None. with draft tokens (`Generator(draft=...)`): "drafted" and
            "accepted" draft tokens per row, "acceptance_rate" (accepted / drafted over the
            batch) and "target_forwards" (prefill plus verification calls of the target).
    """

    prompt_token_ids: list
    token_ids: list
    logprobs: list | None
    finish_reasons: list
    texts: list | None = None
    stats: dict | None = None


def _reset_seed(sampler, seed):
    """Point every seed generator of `sampler` at `seed`, so a call is reproducible."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"`seed` must be an int or None. Received: seed={seed!r}")
    generator = getattr(sampler, "seed_generator", None)
    if generator is not None:
        state = generator.state
        state.assign(ops.convert_to_tensor(np.array([int(seed), 0]), dtype=state.dtype))


class Generator:
    """Generate from a kzoo `CausalLM` with one sampler, compiling once per shape bucket.

    Prompts are left-padded to a power-of-two length P and the new tokens get a power-of-two
    number of slots N (both clipped to the context). One program per (batch, P, N, stop table
    shape) runs prefill over the prompt and the whole decode loop with the KV cache, compiled
    by `kzoo.backend.compile_function`: XLA through `tf.function` on TensorFlow, `jax.jit` on
    JAX (the weights passed in, never baked in), eager without autograd on PyTorch, where each
    one-token model step is a graph traced once per bucket (`kzoo.backend.compile_step`).
    `max_new_tokens`, the prompts and the stop ids are tensors, so new prompts in the same
    bucket reuse it. `trace_count` counts the traces (on PyTorch: the programs made), to
    check that.

    Args:
        model: kzoo `CausalLM`. the language model.
        sampler: str, dict or sampler. a name from `kzoo.samplers.list_samplers()` (default
            "greedy"), a config, a kzoo sampler or a keras_hub sampler. A beam sampler
            (anything with `num_beams`) runs beam search; "contrastive" (a
            `ContrastiveSampler(penalty_alpha, top_k)`, or keras-hub's `ContrastiveSampler(k,
            alpha)`) contrastive search (`kzoo.generation.contrastive`).
        tokenizer: kzoo tokenizer or None. enables text prompts, text stop sequences and
            decoded texts.
        jit_compile: bool. compile with XLA (True) or plain `tf.function` graphs / eager JAX
            (False); on PyTorch, True traces the model step and False runs it eagerly.
        pad_id: int. id written into pad slots and after a row stops (never attended to).
        weights: None, str or `GenerationWeights`. how the projections are read while
            decoding: None (default) transposes the live float weights to the (out, in) layout
            once per call (the fastest float32 layout for XLA on CPU; the reference path for a
            model quantized with Keras' `model.quantize`); "reference" runs the model's own
            `call_with_cache`; "float32", "bfloat16" or "int8" snapshot the weights now with
            `quantize_for_generation`; or a `GenerationWeights` made earlier.
        prompt_bucket: callable or None. the padded prompt length P for the longest prompt
            of a call; None: the power of two above it (`kzoo.generation.inputs.bucket`).
            `kzoo.generation.inputs.fine_bucket` pads less for a few more programs (the
            lm-eval model uses it: its prompts' prefill is most of the work).
        draft: None, "prompt_lookup" or a kzoo `CausalLM`. speculative decoding
            (`kzoo.generation.speculative`): drafts from n-grams of the prompt and the text so
            far, or from a smaller model sharing the vocabulary, checked `num_draft_tokens` at a
            time in one forward of the model. Greedy gives exactly plain greedy's tokens,
            sampling the same distribution. Not with beam search or penalties.
        num_draft_tokens: int. >= 1; drafts per verification step.
        max_ngram: int. >= 1; the longest n-gram prompt lookup matches (longer first).

    Example:
    ```python
    from kzoo.generation import Generator
    from kzoo.models import CausalLM
    model = CausalLM.from_preset("gpt_nano", vocab_size=256)
    generator = Generator(model, sampler="top_k")
    result = generator.generate([[5, 6, 7], [8, 9]], max_new_tokens=8, seed=0)
    result.token_ids   # two lists of 8 ids
    ```
    """

    def __init__(self, model, sampler="greedy", tokenizer=None, jit_compile=True, pad_id=0,
                 weights=None, prompt_bucket=None, draft=None, num_draft_tokens=4,
                 max_ngram=3):
        self.model = model
        self.jit_compile = bool(jit_compile)
        self.decoder = _decoder(model, weights, self.jit_compile)
        self.sampler = contrastive.as_kzoo(samplers_lib.get(sampler))
        self.is_contrastive = contrastive.check(model, self.sampler, draft)
        self.draft, self.num_draft_tokens, self.max_ngram = draft, num_draft_tokens, max_ngram
        self.draft_decoder = None
        if draft is not None:
            draft_model = drafts.check_draft(model, self.sampler, draft, num_draft_tokens,
                                                  max_ngram)
            if draft_model is not None:
                self.draft_decoder = _decoder(draft_model, None, self.jit_compile)
        self.tokenizer = tokenizer
        self.pad_id = int(pad_id)
        self.prompt_bucket = prompt_bucket or inputs_lib.bucket
        self.trace_count = 0
        self._functions = {}

    @property
    def is_beam(self) -> bool:
        return hasattr(self.sampler, "num_beams")

    def _compiled(self, kind: str, key: tuple, fn):
        """A compiled program for `kind` per static `key`; traces are counted in `trace_count`."""
        full_key = (kind, *key)
        if full_key not in self._functions:
            self._functions[full_key] = backend.compile_function(
                fn, self._variables, self.jit_compile, on_trace=self._count_trace)
        return self._functions[full_key]

    def _variables(self) -> list:
        extra = self.draft_decoder.variables() if self.draft_decoder is not None else []
        return self.decoder.variables() + extra

    def _count_trace(self):
        self.trace_count += 1

    def _seeds(self) -> tuple:
        return tuple(ops.convert_to_tensor(v) for v in seed_variables(self.sampler))

    def _keep_seeds(self, seeds):
        """The programs hand the sampler's new seed state back: store it for the next call."""
        for variable, value in zip(seed_variables(self.sampler), seeds):
            variable.assign(value)

    # ------------------------------------------------------------------------- preparation
    def _prepare(self, prompts, max_new_tokens, padding_mask, truncate):
        vocab, context = self.model.vocab_size, self.model.max_sequence_length
        id_lists, is_text = inputs_lib.normalize_prompts(
            prompts, self.tokenizer, padding_mask, vocab
        )
        id_lists = inputs_lib.fit_context(id_lists, max_new_tokens, context, truncate)
        return id_lists, is_text, inputs_lib.left_pad(id_lists, max_new_tokens, context,
                                                      self.pad_id, self.prompt_bucket)

    def _stops(self, stop_token_ids, stop_sequences):
        return inputs_lib.stop_table(
            stop_token_ids, stop_sequences, self.tokenizer, self.model.vocab_size
        )

    # ------------------------------------------------------------------------- generate
    def generate(self, prompts, max_new_tokens=64, stop_token_ids=None, stop_sequences=None,
                 return_logprobs=False, seed=None, padding_mask=None, truncate=False):
        """Generate continuations of a batch of prompts.

        Args:
            prompts: text, list of texts, a list of ids, a list of id lists (any lengths), a
                (batch, seq) id array with `padding_mask` (left or right padded), or a dict
                with "token_ids"/"padding_mask".
            max_new_tokens: int. at most this many new tokens per prompt.
            stop_token_ids: int or list[int] or None. ids that end a row (e.g. end-of-text).
            stop_sequences: str, list of id lists or strings, or None. multi-token stops,
                matched on token ids among the new tokens; one string is one stop sequence.
            return_logprobs: bool. also return each new token's log-probability.
            seed: int or None. reset the sampler's seed first: same seed, same output.
            padding_mask: array or None. (batch, seq) 1 for real tokens of a 2D `prompts`.
            truncate: bool. if a prompt does not fit `max_sequence_length - max_new_tokens`,
                keep its last tokens (sliding window) instead of raising a ValueError.

        Returns a `GenerationResult`.
        """
        id_lists, _, batch = self._prepare(prompts, max_new_tokens, padding_mask, truncate)
        table = self._stops(stop_token_ids, stop_sequences)
        _reset_seed(self.sampler, seed)
        loop = loops.beam_loop if self.is_beam else loops.sample_loop
        key = (*batch.token_ids.shape, batch.new_slots, *table.shape)

        def program(token_ids, lengths, limit, stops, seeds):
            decoder = self.decoder.bind(self.decoder.prepare())
            return loop(decoder, self.sampler, token_ids, lengths, limit, stops,
                        batch.new_slots, self.pad_id, seeds)

        kind = "beam" if self.is_beam else "sample"
        if self.draft is not None:
            kind, program = "speculative", speculative.program(self, batch)
        elif self.is_contrastive:
            kind, program = "contrastive", contrastive.program(self, batch)
        fn = self._compiled(kind, key, program)
        outputs = fn(
            _tensor(batch.token_ids), _tensor(batch.lengths),
            _tensor(np.int32(max_new_tokens)), _tensor(table), self._seeds(),
        )
        tokens, logprobs, counts, stop_lengths, seeds = outputs[:5]
        self._keep_seeds(seeds)
        tokens, logprobs, counts, stop_lengths = (
            ops.convert_to_numpy(t) for t in (tokens, logprobs, counts, stop_lengths))
        keep = counts - stop_lengths  # drop the stop sequence itself
        token_ids = [tokens[r, :keep[r]].tolist() for r in range(len(id_lists))]
        result = GenerationResult(
            prompt_token_ids=id_lists,
            token_ids=token_ids,
            logprobs=([logprobs[r, :keep[r]].tolist() for r in range(len(id_lists))]
                      if return_logprobs else None),
            finish_reasons=["stop" if s > 0 else "length" for s in stop_lengths],
        )
        if self.tokenizer is not None:
            result.texts = [self.tokenizer.decode(ids) for ids in token_ids]
        if self.draft is not None:
            result.stats = speculative.stats(*outputs[5])
        return result

    # ------------------------------------------------------------------------- streaming
    def stream(self, prompt, max_new_tokens=64, stop_token_ids=None, stop_sequences=None,
               seed=None, truncate=False) -> Iterator:
        """Yield new tokens of one prompt as they are produced.

        A compiled prefill, then a compiled single-step program called from Python, so each
        token reaches the caller at once. Yields ints for id prompts and decoded text pieces
        for text prompts (held back while a multi-byte character is incomplete). Stops after
        a stop token/sequence (which is not yielded, when it was already yielded in part the
        rest is not) or `max_new_tokens`.

        Example:
        ```python
        from kzoo.generation import Generator
        from kzoo.models import CausalLM
        generator = Generator(CausalLM.from_preset("gpt_nano", vocab_size=256))
        for token in generator.stream([5, 6, 7], max_new_tokens=4):
            print(token)
        ```
        """
        if self.is_beam:
            raise ValueError("Streaming needs a token-by-token sampler; beam search decides "
                             "its tokens only at the end. Use generate() for beam search.")
        id_lists, is_text, batch = self._prepare(prompt, max_new_tokens, None, truncate)
        if len(id_lists) != 1:
            raise ValueError(f"stream() takes one prompt; received {len(id_lists)}.")
        table = self._stops(stop_token_ids, stop_sequences)
        stops = [row[row != inputs_lib.NO_TOKEN].tolist() for row in table]
        stops = [s for s in stops if s]
        _reset_seed(self.sampler, seed)
        if self.draft is not None:
            tokens = speculative.stream_tokens(self, batch, max_new_tokens)
        elif self.is_contrastive:
            tokens = contrastive.stream_tokens(self, batch, max_new_tokens)
        else:
            tokens = self._plain_tokens(batch, max_new_tokens)
        generated, emitted, shown = [], 0, ""
        for token in tokens:
            generated.append(token)
            hit = next((s for s in stops if generated[-len(s):] == s), None)
            if hit is not None:
                del generated[-len(hit):]
                break
            # Hold back a tail that may still grow into a stop sequence.
            safe = len(generated) - _pending_stop_prefix(generated, stops)
            if safe > emitted:
                if is_text:
                    shown, piece = self._text_piece(generated[:safe], shown)
                    if piece:
                        yield piece
                else:
                    yield from generated[emitted:safe]
                emitted = safe
        if is_text:  # flush held-back text, including an incomplete final character
            _, piece = self._text_piece(generated, shown, final=True)
            if piece:
                yield piece
        elif len(generated) > emitted:
            yield from generated[emitted:]

    def _plain_tokens(self, batch, max_new_tokens) -> Iterator[int]:
        """The new ids of one prompt, one compiled step each, computed only when asked for."""
        sampler, vocab = self.sampler, self.model.vocab_size
        prompt_slots, new_slots = batch.token_ids.shape[1], batch.new_slots

        def first(token_ids, lengths, seeds):
            # Weights prepared here come back out and are fed to every step unchanged.
            prepared = self.decoder.prepare()
            decoder = self.decoder.bind(prepared)
            logits, cache, mask = loops.prefill(decoder, token_ids, lengths, new_slots)
            counts = (loops.prompt_counts(token_ids, lengths, vocab) if loops.uses_counts(sampler)
                      else ops.zeros((1,)))
            token, logp, cache, counts, seeds = loops.pick_with_logprob(
                sampler, logits, cache, counts, vocab, seeds)
            return token, logp, cache, mask, counts, prepared, seeds

        def step(prepared, token, cache, index, mask, positions, counts, seeds):
            return loops.decode_step(self.decoder.bind(prepared), sampler, token, cache, index,
                                     mask, positions, counts, seeds)

        shape_key = (1, prompt_slots, new_slots)
        first_fn = self._compiled("stream_prefill", shape_key, first)
        step_fn = self._compiled("stream_step", shape_key, step)
        lengths = _tensor(batch.lengths)
        token, _, cache, mask, counts, prepared, seeds = first_fn(
            _tensor(batch.token_ids), lengths, self._seeds())
        self._keep_seeds(seeds)
        for i in range(max_new_tokens):
            yield int(ops.convert_to_numpy(token)[0])
            if i + 1 < max_new_tokens:
                token, _, cache, counts, seeds = step_fn(
                    prepared, token, cache, _tensor(np.int32(prompt_slots + i)), mask,
                    lengths + i, counts, seeds,
                )
                self._keep_seeds(seeds)

    def _text_piece(self, ids, shown, final=False):
        """New text since `shown`; waits while the text ends in an incomplete character."""
        text = self.tokenizer.decode(ids)
        if text.endswith("\ufffd") and not final:
            return shown, ""
        piece = text[len(shown):] if text.startswith(shown) else text
        return text, piece


def _decoder(model, weights, compile_steps):
    """The decoder for `Generator(model, weights=..., jit_compile=compile_steps)`."""
    if isinstance(weights, str) and weights == "reference":
        return ModelDecoder(model)
    if weights is None:
        if not supports_prepared(model):
            return ModelDecoder(model)
        return PreparedDecoder(model, compile_steps=compile_steps)
    if isinstance(weights, str):
        if weights not in quantization.MODES:
            raise ValueError(f"Unknown `weights`: {weights!r}. Valid values: None, "
                             f"'reference', {list(quantization.MODES)} or GenerationWeights.")
        weights = quantization.quantize_for_generation(model, weights)
    return PreparedDecoder(model, weights, compile_steps)


def _tensor(array):
    return ops.convert_to_tensor(np.asarray(array))


def _pending_stop_prefix(generated, stops) -> int:
    """Length of the longest tail of `generated` that is a proper prefix of a stop sequence."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(generated)), best, -1):
            if generated[-k:] == stop[:k]:
                best = k
                break
    return best
