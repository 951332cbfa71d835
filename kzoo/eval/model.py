"""`KzooLM`: a kzoo `CausalLM` as an lm-evaluation-harness model, registered as `kzoo`.

Log-likelihoods go through `LoglikelihoodScorer` (one compiled forward per shape bucket),
generation through kzoo's compiled, KV-cached `Generator`. Tokenization, the empty-context
rule, the rolling windows of perplexity tasks, left truncation and the clean-up of generated
text follow lm-eval's own `hf` model, so the two give the same numbers on the same weights.

Example:
```python
import lm_eval
from kzoo.eval import KzooLM, task_manager
lm = KzooLM(pretrained="runs/gpt_nano_pydocs", batch_size=16)
results = lm_eval.simple_evaluate(model=lm, tasks=["kzoo_arith_mc"], task_manager=task_manager())
```
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from tqdm import tqdm

from kzoo.eval.scoring import LoglikelihoodScorer
from kzoo.generation.inputs import fine_bucket

logger = logging.getLogger("kzoo.eval")
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


def _positive_int(name: str, value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0 or isinstance(value, bool):
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return number


def _flag(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} must be true or false; got {value!r}")


@register_model("kzoo")
class KzooLM(TemplateLM):
    """A kzoo model for lm-eval: `lm_eval.simple_evaluate(model=KzooLM(...))`, or
    `--model kzoo --model_args pretrained=PATH --batch_size 16` (`python -m kzoo.eval run`).

    Args:
        pretrained: str or None. what `model.init_from` takes: a run folder, a `.keras` file,
            a Hugging Face folder or a keras-hub preset folder.
        model: kzoo `CausalLM` or None. a model already in memory (instead of `pretrained`).
        tokenizer: str or kzoo tokenizer. "auto" (the model's own), "byte", a tokenizer folder
            or a tokenizer object (needed with `model`).
        batch_size: int. rows per forward and per generation batch ("auto" means 8).
        max_length: int or None. tokens seen at once; default the model's context.
        max_gen_toks: int. new tokens when a task does not say (lm-eval's default 256).
        dtype: str or None. dtype policy of a converted Hugging Face or keras-hub model
            ("float32", "bfloat16", "mixed_bfloat16").
        model_file: str. the model file inside a run folder.
        add_bos_token: bool or None. add a Hugging Face tokenizer's special tokens (its BOS)
            when encoding; None: the tokenizer's own rule, as lm-eval's `hf` model.
        jit_compile: bool. XLA on TensorFlow and JAX.
        seed: int. seed of sampled generations (temperature > 0).
        **kwargs: what lm-eval passes every model (device, max_batch_size): ignored.

    Example:
    ```python
    from kzoo.eval import KzooLM
    from kzoo.models import CausalLM
    from kzoo.tokenizers import ByteTokenizer
    lm = KzooLM(model=CausalLM.from_preset("gpt_nano", vocab_size=257),
                tokenizer=ByteTokenizer(), batch_size=4)
    lm.loglikelihood_tokens_of("2 + 2 =", " 4")   # (-11.2..., False)
    ```
    """

    def __init__(self, pretrained=None, model=None, tokenizer="auto", batch_size=8,
                 max_length=None, max_gen_toks=256, dtype=None, model_file="model.keras",
                 add_bos_token=None, jit_compile=True, seed=0, **kwargs):
        super().__init__()
        if (pretrained is None) == (model is None):
            raise ValueError("pass exactly one of pretrained=PATH (model_args) or model=")
        self.path = None if pretrained is None else str(pretrained)
        if model is None:
            model, tokenizer = _load(self.path, tokenizer, dtype, model_file)
        elif dtype is not None:
            raise ValueError("dtype= applies to a model loaded from pretrained=PATH")
        elif tokenizer == "auto" or isinstance(tokenizer, str):
            raise ValueError("model= needs tokenizer= set to a kzoo tokenizer object")
        self.model, self.tokenizer = model, tokenizer
        self._batch_size = 8 if str(batch_size) == "auto" else _positive_int(
            "batch_size", batch_size)
        context = model.max_sequence_length
        self._max_length = _positive_int("max_length", max_length or context)
        if self._max_length > context:
            raise ValueError(f"max_length={self._max_length} is longer than the model's "
                             f"context (max_sequence_length={context})")
        self._max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
        self.add_bos_token = None if add_bos_token is None else _flag("add_bos_token",
                                                                      add_bos_token)
        self.jit_compile = _flag("jit_compile", jit_compile)
        self.seed = int(seed)
        self.scorer = LoglikelihoodScorer(model, self._batch_size, self._max_length,
                                          self.jit_compile)
        self._generators: dict = {}

    # ------------------------------------------------------------------ what lm-eval reads
    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eot_id)

    @property
    def prefix_token_id(self) -> int:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        name = self.path or f"{self.tokenizer.kind}-tokenizer"
        return name.replace("/", "__")

    def chat_template(self, chat_template=False) -> str | None:
        if chat_template is False or chat_template is None:
            return None
        return _template(self.tokenizer)

    def apply_chat_template(self, chat_history, add_generation_prompt=True) -> str:
        """The conversation rendered with the tokenizer's chat template (kzoo's own when the
        tokenizer has none); without `add_generation_prompt` the last message is left open,
        as transformers' `continue_final_message` does."""
        from kzoo.tokenizers.chat_template import render_chat_template

        variables = dict(getattr(self.tokenizer, "special_tokens", {}) or {})
        text = render_chat_template(_template(self.tokenizer), chat_history,
                                    add_generation_prompt, **variables)
        if not add_generation_prompt and chat_history:
            last = str(chat_history[-1].get("content", "")).strip()
            if last and last in text:
                text = text[:text.rindex(last) + len(last)]
        return text

    def tok_encode(self, string: str, add_special_tokens=None, left_truncate_len=None,
                   **kwargs) -> list[int]:
        if getattr(self.tokenizer, "kind", None) == "hf":
            special = add_special_tokens
            if special is None:
                special = True if self.add_bos_token is None else self.add_bos_token
                prefix = self.tok_decode([self.prefix_token_id], skip_special_tokens=False)
                if prefix and string.startswith(prefix):
                    special = False  # the text brings its BOS already
            ids = self.tokenizer.encode(string, add_special_tokens=special).tolist()
        else:
            ids = [int(i) for i in self.tokenizer.encode(string)]
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of `ids`; a Hugging Face tokenizer drops its special tokens unless told not
        to, as lm-eval's `hf` model decodes generations."""
        if getattr(self.tokenizer, "kind", None) == "hf":
            return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return self.tokenizer.decode(list(ids))

    # ------------------------------------------------------------------ log-likelihoods
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="kzoo loglikelihood")
        answers = self.scorer.score([(ctx, cont) for _, ctx, cont in requests], bar.update)
        bar.close()
        for (key, _, _), answer in zip(requests, answers):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return answers

    def loglikelihood_tokens_of(self, context: str, continuation: str) -> tuple[float, bool]:
        """One (log p, is_greedy) of `continuation` after `context`, tokenized as lm-eval does."""
        from lm_eval.api.instance import Instance

        request = Instance("loglikelihood", {}, (context, continuation), 0)
        return self.loglikelihood([request], disable_tqdm=True)[0]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for index, (text,) in enumerate(req.args for req in requests):
            for context, continuation in map(
                    lm_utils.make_disjoint_window,
                    lm_utils.get_rolling_token_windows(
                        token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                        max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owners.append(index)
        # All windows of all documents in one sorted pass: full batches, few buckets.
        answers = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for owner, (logp, _) in zip(owners, answers):
            totals[owner] += logp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}
        for index, req in enumerate(requests):
            key = json.dumps(req.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="kzoo generate_until")
        out: list = [None] * len(requests)
        for indices in groups.values():
            contexts = [requests[i].args[0] for i in indices]
            texts = self._generate_group(contexts, requests[indices[0]].args[1], bar.update)
            for i, text in zip(indices, texts):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        bar.close()
        return out

    def _generate_group(self, contexts, gen_kwargs, progress) -> list[str]:
        if not isinstance(gen_kwargs, dict):
            raise ValueError(f"generation kwargs must be a mapping; got {gen_kwargs!r}")
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos or None)
        max_gen_toks = kwargs.pop("max_gen_toks")
        room = self.max_length - max_gen_toks
        if room <= 0:
            raise ValueError(f"max_gen_toks={max_gen_toks} leaves no room for a prompt in the "
                             f"model's context of {self.max_length} tokens")
        generator = self._generator(kwargs)
        encoded = [self.tok_encode(c, left_truncate_len=room) or [self.prefix_token_id]
                   for c in contexts]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        size = min(self.batch_size, len(encoded))
        stop_ids = [int(i) for i in self.tokenizer.stop_token_ids]
        # Rows also stop early on a stop string's own tokens; the text is cut at the first
        # stop string afterwards all the same (a string can come out as other tokens).
        stop_sequences = [ids for ids in (self.tok_encode(s, add_special_tokens=False)
                                          for s in until if s and s != eos) if ids]
        texts: list = [None] * len(encoded)
        for start in range(0, len(order), size):
            rows = order[start:start + size]
            prompts = [encoded[i] for i in rows]
            prompts += [prompts[-1]] * (size - len(prompts))  # one shape per bucket
            result = generator.generate(prompts, max_new_tokens=max_gen_toks,
                                        stop_token_ids=stop_ids,
                                        stop_sequences=stop_sequences or None, truncate=True)
            for i, ids in zip(rows, result.token_ids):
                texts[i] = postprocess_generated_text(self.tok_decode(ids), until, None)
            progress(len(rows))
        return texts

    def _generator(self, kwargs):
        from kzoo.generation import Generator
        from kzoo.samplers import Sampler

        do_sample = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature", 0)) > 0
        settings = {k: kwargs[k] for k in SAMPLING_KEYS if do_sample and kwargs.get(k)}
        key = json.dumps(settings, sort_keys=True)
        if key not in self._generators:
            sampler = Sampler(**settings, seed=self.seed) if do_sample else "greedy"
            # Fine prompt buckets: a task's prompts share a few lengths, and their prefill is
            # most of the work when few tokens are generated.
            self._generators[key] = Generator(self.model, sampler=sampler,
                                              tokenizer=self.tokenizer,
                                              jit_compile=self.jit_compile,
                                              prompt_bucket=fine_bucket)
        return self._generators[key]

    def get_model_info(self) -> dict:
        return {"model_num_parameters": int(self.model.count_params()),
                "model_dtype": str(self.model.dtype_policy.name), "model_path": self.path}


def _template(tokenizer) -> str:
    from kzoo.tokenizers.chat_template import DEFAULT_CHAT_TEMPLATE

    return getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE


def _load(path, tokenizer, dtype, model_file):
    """The model and tokenizer at `path`; one-line ValueErrors name what is wrong."""
    from kzoo.models.sources import find_model_source, resolve_tokenizer
    from kzoo.tokenizers import check_vocab

    source = find_model_source(Path(path), model_file, what="pretrained")
    if dtype is not None and source.kind not in ("hf", "keras_hub"):
        raise ValueError(f"dtype={dtype} applies to Hugging Face and keras-hub folders; "
                         f"{path} is a {source.kind} model, evaluated in its saved dtype")
    tok = tokenizer if not isinstance(tokenizer, str) else resolve_tokenizer(
        tokenizer, source, where="tokenizer")
    model = source.load_model(dtype=dtype)
    check_vocab(tok, model.vocab_size, where=str(source.model_path))
    return model, tok
