"""Continuous batching: requests share decode steps, a request's tokens do not depend on what
else is in the batch, and a client that goes away frees its slot."""

import http.client
import json
import threading
import time

from tests.serve.helpers import post


def _text(port, prompt, seed, max_tokens=24):
    status, _, body = post(port, "/v1/completions", {
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0, "top_p": 0.95,
        "top_k": 40, "seed": seed})
    assert status == 200, body
    return body["choices"][0]["text"]


def _together(calls):
    results = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i):
        barrier.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_two_requests_share_decode_steps(served, engine):
    engine.wait_idle()
    before = engine.steps
    _together([lambda: _text(served.port, "one", 1, 40), lambda: _text(served.port, "two", 2, 40)])
    steps = engine.steps - before
    # alone they would take 2 x 39 steps (the first token comes from the prefill); the second
    # joins at the next step boundary, so together they take little more than one of them
    assert 39 <= steps <= 50, steps
    assert engine.wait_idle() and engine.active == 0


def test_same_seed_same_tokens_alone_and_under_load(served, engine):
    alone = _text(served.port, "Once upon", 123)
    others = [lambda s=s: _text(served.port, "x" * (5 + 17 * s), 900 + s, 30) for s in range(4)]
    loaded = _together([lambda: _text(served.port, "Once upon", 123), *others])
    assert loaded[0] == alone
    assert _text(served.port, "Once upon", 124) != alone  # the seed does matter
    assert engine.wait_idle() and engine.active == 0


def test_a_client_that_disconnects_mid_stream_frees_its_slot(served, engine):
    engine.wait_idle()
    before = engine.steps
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps(
        {"prompt": "go", "max_tokens": 120, "stream": True, "temperature": 0,
         "stop": ["no such stop string"]}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.readline().startswith(b"data: ")
    assert engine.active == 1
    conn.sock.close()  # the client goes away
    conn.close()
    deadline = time.monotonic() + 10
    while engine.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.active == 0 and engine.steps - before < 119  # freed before its 120 tokens


def test_a_non_streamed_request_whose_client_leaves_is_cancelled(served, engine):
    engine.wait_idle()
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps(
        {"prompt": "go", "max_tokens": 120, "temperature": 0, "n": 4}),
        {"Content-Type": "application/json"})
    deadline = time.monotonic() + 10
    while engine.active < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    conn.sock.close()
    conn.close()
    assert engine.wait_idle(10) and engine.active == 0


def test_past_the_concurrency_limit_the_answer_is_429_with_retry_after(engine, nano):
    from tests.serve.helpers import Served

    small = Served(engine, nano[1], max_concurrent=1)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", small.port, timeout=30)
        conn.request("POST", "/v1/completions", json.dumps(
            {"prompt": "hold", "max_tokens": 120, "stream": True, "temperature": 0}),
            {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.readline().startswith(b"data: ")
        status, headers, body = post(small.port, "/v1/completions", {"prompt": "x"})
        assert status == 429 and headers["retry-after"] == "1"
        assert body["error"]["type"] == "rate_limit_error"
        conn.close()
    finally:
        small.stop()
    assert engine.wait_idle() and engine.active == 0


def test_int8_generation_weights_decode_as_the_generator_does(nano):
    from kzoo.generation import Generator
    from kzoo.serve.engine import Engine, SamplingParams, Sequence

    model, tokenizer, _ = nano
    engine = Engine(model, tokenizer, slots=2, weights="int8")
    engine.start()
    events = []
    try:
        engine.submit([Sequence([5, 6, 7], SamplingParams(max_tokens=8, temperature=0),
                                events.append)])
        assert engine.wait_idle(60)
    finally:
        engine.stop()
    want = Generator(model, weights="int8").generate([[5, 6, 7]], max_new_tokens=8)
    done = [e for e in events if e["type"] == "done"]
    assert [d["token_ids"] for d in done] == want.token_ids


def test_a_token_without_text_ends_its_own_request_only(nano):
    # `kzoo serve` refuses such a tokenizer at start (test_command); should one still fail to
    # decode a drawn id, that request gets an error and the one beside it goes on.
    from kzoo.serve.engine import Engine, SamplingParams, Sequence

    model, tokenizer, _ = nano

    def run(tok):
        engine = Engine(model, tok, slots=2)
        engine.start()
        events = {0: [], 1: []}
        try:
            engine.submit([Sequence([5, 6, 7], SamplingParams(max_tokens=8, temperature=0),
                                    events[0].append),
                           Sequence([9, 9, 1, 2], SamplingParams(max_tokens=8, temperature=0),
                                    events[1].append)])
            assert engine.wait_idle(60) and engine.active == 0
        finally:
            engine.stop()
        return [e[-1] for e in events.values()]

    first, second = run(tokenizer)
    poison = next(t for t in first["token_ids"] if t not in second["token_ids"])

    class Refusing:
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def decode(self, ids):
            if poison in list(ids):
                raise ValueError(f"no text for id {poison}")
            return tokenizer.decode(ids)

    failed, done = run(Refusing())
    assert failed["type"] == "error" and f"no text for id {poison}" in failed["message"]
    assert done["type"] == "done" and done["token_ids"] == second["token_ids"]


def test_same_seed_same_tokens_whichever_sampler_variant_the_batch_needs(engine):
    # A top-p row elsewhere makes the step sort the vocabulary, a top-k row computes top-k
    # candidates; the rows without top-p draw the same tokens in each variant.
    from kzoo.serve.engine import SamplingParams, Sequence

    def tokens(*params):
        events = [[] for _ in params]
        engine.wait_idle()
        engine.submit([Sequence([3 + p.seed, 40, 41], p, events[i].append)
                       for i, p in enumerate(params)])
        assert engine.wait_idle(60)
        return [e[-1]["token_ids"] for e in events]

    plain = SamplingParams(max_tokens=24, temperature=1.2, seed=5)
    top_k = SamplingParams(max_tokens=24, temperature=0.9, top_k=7, min_p=0.02, seed=6)
    alone = tokens(plain)[0], tokens(top_k)[0]
    with_top_p = tokens(plain, top_k, SamplingParams(max_tokens=30, top_p=0.8, seed=1))
    with_wide_k = tokens(plain, top_k, SamplingParams(max_tokens=30, top_k=200, seed=2))
    assert tuple(with_top_p[:2]) == alone and tuple(with_wide_k[:2]) == alone
    assert len(set(alone[0])) > 5  # sampled, not one repeated token
    variants = {key[1:] for key in engine.programs._programs if key[0] == "step"}
    assert {(True, False, 0), (False, False, 16), (False, False, 256)} <= variants
