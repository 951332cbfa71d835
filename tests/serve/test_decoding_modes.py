"""`kzoo serve`'s decoding modes beside the batch: contrastive search per request
(`penalty_alpha`, `top_k`) and speculative decoding per server (`--prompt-lookup K`,
`--draft-model PATH`). Each gives the tokens `kzoo.generation.generate` gives, streamed or not,
and a plain request is served alongside."""

import http.client
import json
import threading
import time

import pytest

from kzoo.cli.main import main
from tests.helpers import one_error_line
from tests.serve.helpers import Served, post

PROMPT = [104, 105, 32, 104, 105, 32, 104, 105]  # "hi hi hi": prompt lookup finds drafts
ALPHA = {"penalty_alpha": 0.6, "top_k": 4}


def _expected(model, tokenizer, max_tokens, sampler="greedy", **kwargs):
    """(text, ids) of the library's own generation of PROMPT."""
    from kzoo.generation import generate

    ids = generate(model, [PROMPT], max_new_tokens=max_tokens, sampler=sampler,
                   stop_token_ids=tokenizer.stop_token_ids, **kwargs).token_ids[0]
    return tokenizer.decode(ids), ids


def _client(served):
    import openai

    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


def _both(client, **request):
    """(non-streamed answer, streamed text, streamed usage) of one completion request."""
    whole = client.completions.create(model="gpt-nano", prompt=[PROMPT], **request)
    pieces, usage = [], None
    for chunk in client.completions.create(model="gpt-nano", prompt=[PROMPT], stream=True,
                                           stream_options={"include_usage": True}, **request):
        pieces += [c.text for c in chunk.choices]
        usage = chunk.usage or usage
    return whole, "".join(pieces), usage


def _contrastive(alpha=0.6, k=4):
    from kzoo import samplers

    return samplers.get("contrastive", penalty_alpha=alpha, top_k=k)


@pytest.fixture(scope="module")
def lookup(nano):
    """A server started as `kzoo serve --prompt-lookup 3 --slots 2`."""
    from kzoo.serve.engine import Engine

    model, tokenizer, _ = nano
    engine = Engine(model, tokenizer, slots=2, max_queue=8, draft="prompt_lookup",
                    num_draft_tokens=3)
    engine.start()
    server = Served(engine, tokenizer)
    yield server
    server.stop()
    engine.stop()


def test_contrastive_search_gives_the_library_tokens_streamed_or_not(served, nano):
    model, tokenizer, _ = nano
    text, ids = _expected(model, tokenizer, 12, _contrastive())
    whole, streamed, usage = _both(_client(served), max_tokens=12, extra_body=ALPHA)
    assert whole.choices[0].text == text == streamed
    assert whole.usage.completion_tokens == len(ids) == usage.completion_tokens
    assert whole.choices[0].finish_reason == ("length" if len(ids) == 12 else "stop")
    # alpha 0 is greedy, and differs from alpha 0.6 on this model (the penalty is applied)
    greedy, _ = _expected(model, tokenizer, 12)
    zero = _client(served).completions.create(model="gpt-nano", prompt=[PROMPT], max_tokens=12,
                                              extra_body={"penalty_alpha": 0, "top_k": 4})
    assert zero.choices[0].text == greedy != text


def test_contrastive_chat_and_a_plain_request_side_by_side(served, nano):
    from kzoo.generation import generate
    from kzoo.serve.cli import chat_renderer

    model, tokenizer, _ = nano
    messages = [{"role": "user", "content": "hi hi"}]
    ids = generate(model, [chat_renderer(tokenizer)(messages)], max_new_tokens=10,
                   sampler=_contrastive(0.5, 3),
                   stop_token_ids=tokenizer.stop_token_ids).token_ids[0]
    answers = {}

    def chat():
        answers["chat"] = _client(served).chat.completions.create(
            model="gpt-nano", messages=messages, max_tokens=10,
            extra_body={"penalty_alpha": 0.5, "top_k": 3})

    def plain():
        answers["plain"] = _client(served).completions.create(
            model="gpt-nano", prompt="abc", max_tokens=30, temperature=0.8, seed=3)

    threads = [threading.Thread(target=f) for f in (chat, plain)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert answers["chat"].choices[0].message.content == tokenizer.decode(ids)
    assert answers["plain"].usage.completion_tokens == 30  # the batch went on beside the lane
    assert served.engine.wait_idle(30) and served.engine.active == 0


def test_prompt_lookup_gives_plain_greedy_tokens(lookup, nano):
    model, tokenizer, _ = nano
    text, ids = _expected(model, tokenizer, 40)
    before = lookup.engine.lane.decoded
    whole, streamed, usage = _both(_client(lookup), max_tokens=40, temperature=0)
    assert whole.choices[0].text == text == streamed
    assert whole.usage.completion_tokens == len(ids) == usage.completion_tokens
    assert lookup.engine.lane.decoded - before == 2 * len(ids)  # both went through the lane
    # the library's own speculative run agrees, and its drafts did hit on this prompt
    from kzoo.generation import generate

    spec = generate(model, [PROMPT], max_new_tokens=40, draft="prompt_lookup",
                    num_draft_tokens=3, stop_token_ids=tokenizer.stop_token_ids)
    assert spec.token_ids[0] == ids and spec.stats["accepted"][0] > 0
    # a stop string ends the text before it, as in the batch
    stop = text[5:7]
    cut = _client(lookup).completions.create(model="gpt-nano", prompt=[PROMPT], max_tokens=40,
                                             temperature=0, stop=[stop])
    assert cut.choices[0].text == text[:text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_on_a_draft_server_seeds_repeat_and_logprobs_go_to_the_batch(lookup):
    client = _client(lookup)

    def sampled():
        return client.completions.create(model="gpt-nano", prompt=[PROMPT], max_tokens=16,
                                         temperature=0.9, seed=11,
                                         extra_body={"top_k": 20}).choices[0].text
    first = sampled()
    assert first == sampled() and len(first) > 0
    steps = lookup.engine.steps
    scored = client.completions.create(model="gpt-nano", prompt=[PROMPT], max_tokens=6,
                                       temperature=0, logprobs=2)
    assert len(scored.choices[0].logprobs.top_logprobs) == scored.usage.completion_tokens
    assert lookup.engine.steps > steps  # decoded by the batched step


def test_a_client_that_hangs_up_frees_the_lane(lookup):
    engine = lookup.engine
    before = engine.lane.decoded
    conn = http.client.HTTPConnection("127.0.0.1", lookup.port, timeout=60)
    conn.request("POST", "/v1/completions", body=json.dumps(
        {"prompt": [1, 2, 3], "max_tokens": 120, "temperature": 0, "stream": True}),
        headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.readline().startswith(b"data: ")
    conn.close()
    deadline = time.monotonic() + 30
    while engine.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.active == 0 and engine.lane.decoded - before < 120


def test_a_draft_model_gives_plain_greedy_tokens(nano):
    import keras

    from kzoo.models import CausalLM
    from kzoo.serve.engine import Engine
    from kzoo.serve.sequence import SamplingParams, Sequence

    model, tokenizer, _ = nano
    keras.utils.set_random_seed(1)  # another model: its drafts miss as often as they hit
    draft = CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=128)
    engine = Engine(model, tokenizer, slots=2, draft=draft, num_draft_tokens=2)
    engine.start()
    events = []
    try:
        engine.submit([Sequence(PROMPT, SamplingParams(max_tokens=16, temperature=0,
                                                       stop_token_ids=tokenizer.stop_token_ids),
                                events.append)])
        assert engine.wait_idle(120)
    finally:
        engine.stop()
    assert events[-1]["type"] == "done"
    assert events[-1]["token_ids"] == _expected(model, tokenizer, 16)[1]
    assert engine.lane.decoded == len(events[-1]["token_ids"])


BAD = [  # (extra fields, the field named)
    ({"penalty_alpha": 1.5}, "penalty_alpha"), ({"penalty_alpha": -0.1}, "penalty_alpha"),
    ({"penalty_alpha": "x"}, "penalty_alpha"), ({"penalty_alpha": 0.6, "top_k": 0}, "top_k"),
    ({"penalty_alpha": 0.6, "top_k": -1}, "top_k"),
    ({"penalty_alpha": 0.6, "top_k": 300}, "top_k"),  # more than the 257 ids
    ({"penalty_alpha": 0.6, "temperature": 0.7}, "temperature"),
    ({"penalty_alpha": 0.6, "top_p": 0.9}, "top_p"), ({"penalty_alpha": 0.6, "n": 2}, "n"),
    ({"penalty_alpha": 0.6, "logprobs": 2}, "logprobs"),
]


@pytest.mark.parametrize("extra,field", BAD, ids=[json.dumps(e)[:40] for e, _ in BAD])
def test_what_contrastive_search_refuses_is_one_error_naming_the_field(served, extra, field):
    status, _, body = post(served.port, "/v1/completions", {"prompt": "hi", **extra})
    assert status == 422, body
    error = body["error"]
    assert error["param"] == field and error["message"].startswith(field + ":")
    assert "Traceback" not in error["message"] and "\n" not in error["message"]


def test_contrastive_chat_refuses_logprobs(served):
    status, _, body = post(served.port, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi"}], "logprobs": True, **ALPHA})
    assert status == 422 and body["error"]["param"] == "logprobs"
    assert "penalty_alpha" in body["error"]["message"]


@pytest.mark.parametrize("flags,words", [
    (["--prompt-lookup", "0"], "--prompt-lookup 0: the number of draft tokens must be at least 1"),
    (["--prompt-lookup", "2", "--draft-model", "x"], "do not combine"),
    (["--draft-tokens", "3"], "--draft-tokens needs --draft-model"),
    (["--draft-model", "nowhere", "--draft-tokens", "0"], "--draft-tokens 0"),
    (["--draft-model", "nowhere"], "--draft-model nowhere does not exist"),
])
def test_bad_draft_flags_are_one_line_and_exit_code_2(nano, capsys, flags, words):
    assert main(["serve", str(nano[2]), *flags]) == 2
    assert words in one_error_line(capsys)


def test_a_draft_model_with_another_vocabulary_is_refused(nano, tmp_path, capsys):
    from kzoo.models import CausalLM

    CausalLM.from_preset("gpt_nano", vocab_size=300, max_sequence_length=32).save(
        tmp_path / "model.keras")
    assert main(["serve", str(nano[2]), "--draft-model", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "300 ids" in line and "257" in line and "--draft-model" in line


def test_help_names_the_modes(capsys):
    assert main(["serve", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--prompt-lookup K" in out and "--draft-model PATH" in out
    assert "--draft-tokens K" in out and "penalty_alpha" in out


def test_the_command_serves_with_prompt_lookup(nano):
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    from tests.helpers import ROOT

    model, tokenizer, run = nano
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "kzoo.cli.main", "serve", str(run), "--port", "0", "--slots",
         "1", "--prompt-lookup", "3"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "prompt lookup, 3 draft tokens" in line, process.stderr.read()
        url = line.split(" on ")[1].split()[0]
        request = urllib.request.Request(url + "/completions", data=json.dumps(
            {"prompt": PROMPT, "max_tokens": 20, "temperature": 0}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        assert answer["choices"][0]["text"] == _expected(model, tokenizer, 20)[0]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
