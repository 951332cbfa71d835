"""The Starlette app of `kzoo serve`: OpenAI's endpoints over an `Engine`.

    GET  /health, /v1/models, /tokenizer_info
    POST /v1/completions, /v1/chat/completions (stream: true as server-sent events ending with
         `data: [DONE]`), /tokenize, /detokenize (vLLM's, so lm-eval's `local-completions`
         tokenizes with the model's own tokenizer, offline)

Every endpoint checks the API key (`Authorization: Bearer KEY`) when there is one; without one,
on a loopback address, the Host header must name that address (a DNS-rebinding page names its
own). Past `max_concurrent` requests under way, or a full engine queue, the answer is 429 with
`Retry-After`; every error is OpenAI's `{"error": {"message", "type", "param", "code"}}` and
never a traceback. A request that does not finish within `timeout_s` is cancelled (503); a
client that goes away frees its slots at the next step.

Example:
```python
app = build_app(engine, tokenizer, render, Settings(model_name="gpt-nano", port=8000))
```
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from dataclasses import dataclass

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from kzoo.serve import http, protocol
from kzoo.serve.sequence import Sequence

HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
           "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 405: "invalid_request_error", 408: "timeout_error",
         413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
         500: "server_error", 503: "service_unavailable"}


@dataclass
class Settings:
    """The server's limits and names.

    Args:
        model_name: str. the model's id in /v1/models (requests may name it or leave it out).
        host: str. the address bound (loopback: the Host header is checked without a key).
        port: int. the port bound.
        api_key: str or None. required as `Authorization: Bearer KEY` on every endpoint.
        limits: protocol.Limits or None. per-request limits (None: from the context).
        max_concurrent: int. requests under way at once (429 past that).
        max_body: int. bytes of a request body (413 past that).
        body_timeout_s: float. seconds a body may take to arrive (408).
        timeout_s: float. seconds a request may take in all (503, cancelled).
    """

    model_name: str = "kzoo"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    limits: protocol.Limits | None = None
    max_concurrent: int = 64
    max_body: int = 8 << 20
    body_timeout_s: float = 30.0
    timeout_s: float = 600.0


def error_body(status: int, message: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def _error(refused: http.Refused) -> JSONResponse:
    return JSONResponse(error_body(refused.status, str(refused), refused.param, refused.code),
                        status_code=refused.status, headers=refused.headers)


class Protocol(http.JSONErrorProtocol):
    """uvicorn's protocol answering the requests it refuses itself in OpenAI's error JSON."""

    def error_body(self, message: str) -> dict:
        return error_body(400, message)

    def extra_headers(self) -> dict:
        return HEADERS


def build_app(engine, tokenizer, render, settings: Settings) -> Starlette:
    """The ASGI app serving `engine`.

    Args:
        engine: kzoo.serve.engine.Engine (started).
        tokenizer: the model's kzoo tokenizer.
        render: callable. chat messages -> prompt ids (the model's chat template).
        settings: Settings.
    """
    limits = settings.limits or protocol.Limits(context=engine.length,
                                                 vocab=engine.model.vocab_size)
    hosts = {f"{h}:{settings.port}" for h in ("127.0.0.1", "localhost", "[::1]")}
    state = {"under_way": 0}
    name = settings.model_name

    async def health(request):
        return JSONResponse({"status": "ok", "model": name, "slots": engine.slots,
                             "active": engine.active, "queued": engine.queued,
                             "steps": engine.steps})

    async def models(request):
        return JSONResponse({"object": "list", "data": [{
            "id": name, "object": "model", "created": 0, "owned_by": "kzoo",
            "max_model_len": engine.length}]})

    async def tokenizer_info(request):
        eos = tokenizer.decode([tokenizer.eot_id])
        return JSONResponse({"eos_token": eos, "bos_token": None, "pad_token": None,
                             "chat_template": None, "model_max_length": engine.length})

    async def tokenize(request):
        body = await _body(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise http.Refused(422, "prompt: must be a string", param="prompt")
        return JSONResponse({"tokens": np.asarray(tokenizer.encode(prompt)).tolist()
                             if prompt else []})

    async def detokenize(request):
        body = await _body(request)
        tokens = body.get("tokens")
        if not (isinstance(tokens, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                                 and 0 <= t < tokenizer.vocab_size
                                                 for t in tokens)):
            raise http.Refused(422, f"tokens: must be a list of ids in [0, "
                               f"{tokenizer.vocab_size})", param="tokens")
        return JSONResponse({"prompt": tokenizer.decode(tokens)})

    async def completions(request):
        body = await _body(request)
        return await _serve(request, protocol.parse_completion(body, tokenizer, limits, name))

    async def chat(request):
        body = await _body(request)
        return await _serve(request, protocol.parse_chat(body, tokenizer, render, limits, name))

    async def _body(request):
        return await http.read_json(request, settings.max_body, settings.body_timeout_s)

    async def _serve(request, parsed):
        if state["under_way"] >= settings.max_concurrent:
            raise http.Refused(429, f"{settings.max_concurrent} requests are under way; try "
                               "again shortly", code="too_many_requests",
                               headers={"Retry-After": "1"})
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def sink(index):
            def put(event):
                try:
                    loop.call_soon_threadsafe(events.put_nowait, (index, event))
                except RuntimeError:  # the loop is gone (shutting down): nobody listens
                    pass
            return put

        seqs = [Sequence(ids, parsed.params, None, choice)
                for ids in parsed.prompts for choice in range(parsed.n)]
        for i, seq in enumerate(seqs):
            seq.sink = sink(i)
        if not engine.submit(seqs):
            raise http.Refused(429, f"the queue is full ({engine.max_queue} sequences wait for "
                               "a slot); try again shortly", code="queue_full",
                               headers={"Retry-After": "1"})
        state["under_way"] += 1
        deadline = time.monotonic() + settings.timeout_s
        if parsed.stream:
            return StreamingResponse(_stream(parsed, seqs, events, deadline),
                                     media_type="text/event-stream")
        try:
            done = await _collect(request, seqs, events, deadline)
        finally:
            _release(seqs)
        return JSONResponse(protocol.answer(parsed, done, tokenizer, name))

    def _release(seqs):
        for seq in seqs:
            seq.cancel()  # a no-op for a finished one; frees the slot of one still running
        state["under_way"] -= 1

    async def _next(events, deadline):
        left = deadline - time.monotonic()
        try:
            index, event = await asyncio.wait_for(events.get(), max(left, 0.001))
        except TimeoutError:
            raise http.Refused(503, f"the request did not finish within "
                               f"{settings.timeout_s:g} s; it was cancelled",
                               code="timeout") from None
        if event["type"] == "error":
            raise http.Refused(503, event["message"], code="unavailable")
        return index, event

    async def _collect(request, seqs, events, deadline):
        """The "done" event of every sequence; a client gone away cancels them (checked each
        half second, as a non-streamed answer has nothing to write until the end)."""
        done = [None] * len(seqs)
        while any(d is None for d in done):
            try:
                index, event = await _next(events, min(deadline, time.monotonic() + 0.5))
            except http.Refused as refused:
                if refused.code != "timeout" or time.monotonic() >= deadline:
                    raise
                if await request.is_disconnected():
                    raise http.Refused(400, "the client went away") from None
                continue
            if event["type"] == "done":
                done[index] = event
        return done

    async def _stream(parsed, seqs, events, deadline):
        """Server-sent events: one chunk per piece of text, the last with its finish_reason."""
        kind = "chat.completion.chunk" if parsed.chat else "text_completion"
        ident, created = protocol.new_id("chatcmpl" if parsed.chat else "cmpl"), int(time.time())
        top = parsed.params.logprobs

        def chunk(choices, usage=None):
            data = {"id": ident, "object": kind, "created": created, "model": name,
                    "choices": choices}
            if parsed.include_usage:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n"

        def choice(index, text, entries, finish=None, first=False):
            if parsed.chat:
                delta = {"role": "assistant", "content": text} if first else {"content": text}
                logprobs = (None if top is None or not entries
                            else protocol.chat_logprobs(entries, tokenizer, top))
                return {"index": index, "delta": delta, "logprobs": logprobs,
                        "finish_reason": finish}
            logprobs = (None if top is None or not entries
                        else protocol.completion_logprobs(entries, tokenizer, top))
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

        done = [None] * len(seqs)
        try:
            if parsed.chat:
                yield chunk([choice(i, "", [], first=True) for i in range(len(seqs))])
            while any(d is None for d in done):
                try:
                    index, event = await _next(events, deadline)
                except http.Refused as refused:
                    yield f"data: {json.dumps(error_body(refused.status, str(refused)))}\n\n"
                    break
                if event["type"] == "token":
                    yield chunk([choice(index, event["text"], event["entries"])])
                else:
                    done[index] = event
                    yield chunk([choice(index, event["delta"], event["entries"],
                                        event["finish_reason"])])
            else:
                if parsed.include_usage:
                    data = {"id": ident, "object": kind, "created": created, "model": name,
                            "choices": [], "usage": protocol.usage(parsed, done)}
                    yield f"data: {json.dumps(data)}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # finished, failed, or the client went away (the task is cancelled)
            _release(seqs)

    def guarded(endpoint):
        async def handle(request: Request) -> Response:
            try:
                if settings.api_key:
                    auth = request.headers.get("authorization", "")
                    given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
                    if not secrets.compare_digest(given.encode(), settings.api_key.encode()):
                        raise http.Refused(401, "a valid API key is needed: send "
                                           "'Authorization: Bearer KEY'", code="invalid_api_key")
                elif http.is_loopback(settings.host) and request.headers.get("host") not in hosts:
                    raise http.Refused(403, "the Host header names another site")
                return await endpoint(request)
            except http.Refused as refused:
                return _error(refused)
            except Exception as error:  # noqa: BLE001  a bug: one line here, JSON there
                print(f"kzoo serve: {request.method} {request.url.path}: "
                      f"{type(error).__name__}: {error}", file=sys.stderr)
                return _error(http.Refused(500, f"internal error ({type(error).__name__})"))
        return handle

    async def http_error(request, error: HTTPException):
        message = {404: f"no such path {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}
        return _error(http.Refused(error.status_code,
                                   message.get(error.status_code, str(error.detail))))

    routes = [Route("/health", guarded(health), methods=["GET"]),
              Route("/v1/models", guarded(models), methods=["GET"]),
              Route("/tokenizer_info", guarded(tokenizer_info), methods=["GET"]),
              Route("/tokenize", guarded(tokenize), methods=["POST"]),
              Route("/detokenize", guarded(detokenize), methods=["POST"]),
              Route("/v1/completions", guarded(completions), methods=["POST"]),
              Route("/v1/chat/completions", guarded(chat), methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    return http.with_headers(app, HEADERS)
