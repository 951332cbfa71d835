"""OpenAI's wire format: request bodies checked into prompts and `SamplingParams`, and answers
built from the engine's "done" events.

Unknown fields are ignored, as OpenAI does; a known field with a value kzoo cannot honour is a
422 naming the field and the allowed values; a prompt that does not fit the model's context is a
400 with code `context_length_exceeded`. Every refusal is a `kzoo.serve.http.Refused`.

Example:
```python
from kzoo.serve.protocol import Limits, parse_completion
request = parse_completion({"prompt": "Hi", "max_tokens": 4}, tokenizer, Limits(context=128))
request.prompts, request.params.max_tokens   # [[72, 105]], 4
```
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from kzoo.serve.http import Refused
from kzoo.serve.sampling import TOP_N
from kzoo.serve.sequence import SamplingParams

CONTRASTIVE_TOP_K = 4  # candidates of contrastive search when a request gives no top_k
CONTRASTIVE = ("penalty_alpha (contrastive search) combines with top_k, max_tokens, stop, "
               "stream, echo and seed; it is deterministic")


@dataclass
class Limits:
    """What one request may ask for.

    Args:
        context: int. the model's context (prompt + max_tokens must fit).
        max_tokens: int or None. the most new tokens (None: context - 1).
        max_n: int. the most choices per prompt.
        max_stop: int. the most stop strings.
        max_prompts: int. the most prompts in one batched completion request.
        vocab: int or None. the model's ids (contrastive search's top_k is at most that).
    """

    context: int
    max_tokens: int | None = None
    max_n: int = 8
    max_stop: int = 4
    max_prompts: int = 64
    vocab: int | None = None


@dataclass
class Request:
    """A checked request: prompts as ids, `n` choices of each, the settings."""

    prompts: list
    params: SamplingParams
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    chat: bool = False
    extra: dict = field(default_factory=dict)


def _invalid(param: str, message: str) -> Refused:
    return Refused(422, f"{param}: {message}", param=param, code="invalid_value")


def _int(body, name, default, low, high, allow_none=True):
    value = body.get(name, default)
    if value is None and allow_none:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(name, f"must be an integer in [{low}, {high}]; got {value!r}")
    return value


def _number(body, name, default, low, high, low_open=False):
    value = body.get(name, default)
    if value is None:
        return default
    ok = (not isinstance(value, bool) and isinstance(value, int | float)
          and math.isfinite(value) and (value > low if low_open else value >= low)
          and value <= high)
    if not ok:
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise _invalid(name, f"must be a number in {bound}; got {value!r}")
    return float(value)


def _bool(body, name, default=False):
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(name, f"must be true or false; got {value!r}")
    return value


def _sampling(body, limits: Limits, tokenizer, max_tokens_key="max_tokens", default_tokens=16):
    """The settings every endpoint shares."""
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise _invalid(name, "is not supported by kzoo serve; use 0 or leave it out")
    if body.get("logit_bias"):
        raise _invalid("logit_bias", "is not supported by kzoo serve; leave it out")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise _invalid("stop", "must be a non-empty string or a list of them")
    if len(stop) > limits.max_stop:
        raise _invalid("stop", f"at most {limits.max_stop} stop strings; got {len(stop)}")
    cap = limits.max_tokens or limits.context - 1
    top_k = _int(body, "top_k", 0, -1, 2**31 - 1)
    params = SamplingParams(
        max_tokens=_int(body, max_tokens_key, default_tokens, 0, cap),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_k=max(top_k, 0),  # -1 (vLLM's "off") and 0 both keep every token
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        min_p=_number(body, "min_p", 0.0, 0.0, 1.0),
        seed=_int(body, "seed", None, -(2**63), 2**63 - 1),
        stop=stop, stop_token_ids=[int(i) for i in tokenizer.stop_token_ids])
    n = _int(body, "n", 1, 1, limits.max_n)
    if _int(body, "best_of", n, n, n) != n:
        raise _invalid("best_of", "must equal n")
    return params, n


def _check_model(body, model_name: str):
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _invalid("model", f"must be a string; got {model!r}")
    if model not in (None, model_name):
        raise Refused(404, f"the model {model!r} does not exist; this server has "
                      f"{model_name!r} (GET /v1/models)", param="model", code="model_not_found")


def _fit(prompts, params: SamplingParams, limits: Limits):
    for i, ids in enumerate(prompts):
        if len(ids) + params.max_tokens > limits.context:
            raise Refused(400, f"this model's context is {limits.context} tokens; prompt {i} "
                          f"has {len(ids)} and max_tokens asks for {params.max_tokens} more: "
                          "shorten the prompt or lower max_tokens", param="prompt",
                          code="context_length_exceeded")


def parse_completion(body: dict, tokenizer, limits: Limits, model_name="kzoo") -> Request:
    """A POST /v1/completions body as a `Request`.

    Raises:
        Refused: 422 for a missing or invalid field, 404 an unknown model, 400 too long.
    """
    _check_model(body, model_name)
    if body.get("suffix") is not None:
        raise _invalid("suffix", "is not supported by kzoo serve; leave it out")
    prompt = body.get("prompt")
    vocab = tokenizer.vocab_size
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt
                                   and all(_is_id(i) for i in prompt)):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise _invalid("prompt", "is required: a string, a list of strings, a list of token "
                       "ids or a list of such lists")
    if len(prompt) > limits.max_prompts:
        raise _invalid("prompt", f"at most {limits.max_prompts} prompts per request")
    prompts = []
    for i, p in enumerate(prompt):
        if isinstance(p, str):
            ids = [int(t) for t in np.asarray(tokenizer.encode(p)).tolist()] if p else []
        elif isinstance(p, list) and all(_is_id(t) for t in p):
            ids = list(p)
            if any(not 0 <= t < vocab for t in ids):
                raise _invalid("prompt", f"prompt {i} holds token ids outside [0, {vocab})")
        else:
            raise _invalid("prompt", f"prompt {i} is neither a string nor a list of token ids")
        if not ids:
            raise _invalid("prompt", f"prompt {i} is empty: give at least one token")
        prompts.append(ids)
    params, n = _sampling(body, limits, tokenizer)
    params.echo = _bool(body, "echo")
    params.logprobs = _int(body, "logprobs", None, 0, TOP_N)
    _fit(prompts, params, limits)
    if params.max_tokens == 0 and not params.echo:
        raise _invalid("max_tokens", "0 asks for nothing: use at least 1, or echo: true to "
                       "score the prompt")
    _contrastive(body, params, n, limits)
    stream, usage = _stream(body)
    if stream and params.echo:
        raise _invalid("echo", "is not supported with stream: true")
    return Request(prompts, params, n, stream, usage)


def parse_chat(body: dict, tokenizer, render, limits: Limits, model_name="kzoo") -> Request:
    """A POST /v1/chat/completions body as a `Request`; `render(messages)` gives the ids."""
    _check_model(body, model_name)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "is required: a non-empty list of {role, content}")
    clean = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("system", "developer", "user", "assistant"):
            raise _invalid(f"messages[{i}].role", "must be system, developer, user or "
                           f"assistant; got {role!r}")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text can be read
            if not all(isinstance(p, dict) and p.get("type") == "text"
                       and isinstance(p.get("text"), str) for p in content):
                raise _invalid(f"messages[{i}].content", "only text parts are supported")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise _invalid(f"messages[{i}].content", "must be a string or text parts")
        clean.append({"role": "system" if role == "developer" else role, "content": content})
    ids = [int(t) for t in render(clean)]
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
        else "max_tokens"
    default = max(1, min(256, limits.context - len(ids)))
    params, n = _sampling(body, limits, tokenizer, key, default)
    if params.max_tokens == 0:
        raise _invalid(key, "must be at least 1")
    if _bool(body, "logprobs"):
        params.logprobs = _int(body, "top_logprobs", 0, 0, TOP_N)
    elif body.get("top_logprobs") is not None:
        raise _invalid("top_logprobs", "needs logprobs: true")
    _fit([ids], params, limits)
    _contrastive(body, params, n, limits)
    stream, usage = _stream(body)
    return Request([ids], params, n, stream, usage, chat=True)


def _contrastive(body, params: SamplingParams, n: int, limits: Limits) -> None:
    """`penalty_alpha` (0..1) with `top_k` (>= 1, default 4) into `params`: contrastive search,
    decoded in the lane of `kzoo.serve.modes`. What it does not combine with is refused."""
    if body.get("penalty_alpha") is None:
        return
    params.penalty_alpha = _number(body, "penalty_alpha", None, 0.0, 1.0)
    top_k = body.get("top_k")
    high = limits.vocab or 2**31 - 1
    if top_k is None:
        params.top_k = min(CONTRASTIVE_TOP_K, high)
    elif isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= high:
        raise _invalid("top_k", f"with penalty_alpha (contrastive search) must be an integer in "
                       f"[1, {high}], the candidates scored per token; got {top_k!r}")
    for name, off in (("temperature", 0), ("top_p", 1), ("min_p", 0)):
        if body.get(name) is not None and body[name] != off:
            raise _invalid(name, f"must be {off} or left out with penalty_alpha: {CONTRASTIVE}, "
                           f"not with sampling; got {body[name]!r}")
    if n > 1:
        raise _invalid("n", f"must be 1 with penalty_alpha: {CONTRASTIVE}, so every choice "
                       f"would be the same; got {n}")
    if params.logprobs is not None:
        raise _invalid("logprobs", f"is not supported with penalty_alpha: {CONTRASTIVE}; "
                       "leave logprobs out")


def _stream(body):
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _invalid("stream_options", "must be an object")
    return stream, bool(stream and options and options.get("include_usage"))


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------- answers
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(request: Request, done: list) -> dict:
    prompt = sum(len(p) for p in request.prompts)
    completion = sum(len(d["token_ids"]) for d in done)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def completion_logprobs(entries, tokenizer, top_n, prompt=None, offset=0) -> dict:
    """OpenAI's legacy `logprobs` object from (id, logprob, tops) entries (prompt ones first
    when echoing; the first prompt token has None)."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    for token, logp, tops in [*(prompt or []), *entries]:
        text = tokenizer.decode([token])
        offsets.append(offset)
        offset += len(text)
        tokens.append(text)
        token_logprobs.append(logp)
        if tops is None:
            top_logprobs.append(None)
            continue
        top = {}
        for i, lp in tops[:top_n]:
            key = tokenizer.decode([i])
            top[key] = max(top.get(key, -math.inf), lp)
        top_logprobs.append(top)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": offsets}


def chat_logprobs(entries, tokenizer, top_n) -> dict:
    def item(token, logp):
        text = tokenizer.decode([token])
        return {"token": text, "logprob": logp, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**item(t, lp), "top_logprobs": [item(i, v) for i, v in tops[:top_n]]}
                        for t, lp, tops in entries]}


def prompt_entries(done: dict) -> list:
    return list(zip(done["prompt_ids"], done["prompt_logprobs"], done["prompt_tops"]))


def answer(request: Request, done: list, tokenizer, model_name: str) -> dict:
    """The whole (non-streamed) answer from the "done" events, in choice order."""
    created, params = int(time.time()), request.params
    choices = []
    for index, d in enumerate(done):
        entries = list(zip(d["token_ids"], d["logprobs"], d["tops"]))
        if request.chat:
            logprobs = (None if params.logprobs is None
                        else chat_logprobs(entries, tokenizer, params.logprobs))
            choices.append({"index": index, "message": {"role": "assistant",
                                                         "content": d["text"]},
                            "logprobs": logprobs, "finish_reason": d["finish_reason"]})
            continue
        text = d["text"]
        prompt = None
        if params.echo:
            prompt_text = tokenizer.decode(d["prompt_ids"])
            text, prompt = prompt_text + text, prompt_entries(d)
        logprobs = (None if params.logprobs is None else
                    completion_logprobs(entries, tokenizer, params.logprobs, prompt))
        choices.append({"index": index, "text": text, "logprobs": logprobs,
                        "finish_reason": d["finish_reason"]})
    kind = "chat.completion" if request.chat else "text_completion"
    return {"id": new_id("chatcmpl" if request.chat else "cmpl"), "object": kind,
            "created": created, "model": model_name, "choices": choices,
            "usage": usage(request, done)}
