"""`kzoo serve` through the official `openai` client: the answers are what kzoo's own
`Generator` and log-likelihood scorer compute on the same weights."""

import http.client
import json

import numpy as np
import openai
import pytest

from kzoo.generation import Generator
from kzoo.serve.cli import chat_renderer
from tests.serve.helpers import Served


def _greedy(model, ids, n):
    result = Generator(model).generate([ids], max_new_tokens=n, return_logprobs=True)
    return result.token_ids[0], result.logprobs[0]


def test_models_and_health(client, served):
    assert [m.id for m in client.models.list().data] == ["gpt-nano"]
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    conn.request("GET", "/health")
    health = json.loads(conn.getresponse().read())
    conn.close()
    assert health["status"] == "ok" and health["slots"] == 4


def test_completion_is_the_generators_greedy_text_with_its_logprobs(client, nano):
    model, tokenizer, _ = nano
    answer = client.completions.create(model="gpt-nano", prompt="Hello, world", max_tokens=12,
                                       temperature=0, logprobs=3)
    ids, logprobs = _greedy(model, tokenizer.encode("Hello, world").tolist(), 12)
    choice = answer.choices[0]
    assert choice.text == tokenizer.decode(ids) and choice.finish_reason == "length"
    np.testing.assert_allclose(choice.logprobs.token_logprobs, logprobs, atol=1e-4)
    assert all(len(top) <= 3 for top in choice.logprobs.top_logprobs)
    first = choice.logprobs.top_logprobs[0]
    assert max(first.values()) == pytest.approx(logprobs[0], abs=1e-4)  # greedy: the best one
    assert answer.usage.prompt_tokens == 12 and answer.usage.completion_tokens == 12


def test_token_id_and_batched_prompts_with_n_choices(client, nano):
    model, tokenizer, _ = nano
    answer = client.completions.create(model="gpt-nano", prompt=[[5, 6, 7], [70, 71]],
                                       max_tokens=5, temperature=0.8, n=2, seed=3)
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    assert answer.usage.prompt_tokens == 5 and answer.usage.completion_tokens == 20
    again = client.completions.create(model="gpt-nano", prompt=[[5, 6, 7], [70, 71]],
                                      max_tokens=5, temperature=0.8, n=2, seed=3)
    assert [c.text for c in again.choices] == [c.text for c in answer.choices]
    greedy = client.completions.create(model="gpt-nano", prompt=[5, 6, 7], max_tokens=5,
                                       temperature=0)
    assert greedy.choices[0].text == tokenizer.decode(_greedy(model, [5, 6, 7], 5)[0])


def test_stop_string_cuts_the_text(client, nano):
    model, tokenizer, _ = nano
    full = client.completions.create(model="gpt-nano", prompt="abc", max_tokens=16,
                                     temperature=0).choices[0].text
    stop = full[3:5]
    cut = client.completions.create(model="gpt-nano", prompt="abc", max_tokens=16,
                                    temperature=0, stop=[stop]).choices[0]
    assert cut.text == full[:full.index(stop)] and cut.finish_reason == "stop"


def test_echo_gives_the_prompts_log_likelihood_as_kzoo_scores_it(client, nano):
    from kzoo.eval.scoring import LoglikelihoodScorer

    model, tokenizer, _ = nano
    answer = client.completions.create(model="gpt-nano", prompt="The cat sat", max_tokens=1,
                                       temperature=0, logprobs=1, echo=True)
    lp = answer.choices[0].logprobs
    ids = tokenizer.encode("The cat sat").tolist()
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids) + 1
    assert answer.choices[0].text.startswith("The cat sat")
    expected, _ = LoglikelihoodScorer(model, batch_size=1).score([(ids[:4], ids[4:])])[0]
    assert sum(lp.token_logprobs[4:-1]) == pytest.approx(expected, abs=1e-4)


def test_chat_uses_the_template_and_streams_the_same_text(client, nano):
    model, tokenizer, _ = nano
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    answer = client.chat.completions.create(model="gpt-nano", messages=messages, max_tokens=10,
                                            temperature=0, logprobs=True, top_logprobs=2)
    ids, logprobs = _greedy(model, chat_renderer(tokenizer)(messages), 10)
    assert answer.choices[0].message.content == tokenizer.decode(ids)
    content = answer.choices[0].logprobs.content
    np.testing.assert_allclose([c.logprob for c in content], logprobs, atol=1e-4)
    assert all(len(c.top_logprobs) == 2 for c in content)
    stream = client.chat.completions.create(model="gpt-nano", messages=messages, max_tokens=10,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10


def test_the_event_stream_ends_with_done(served):
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps(
        {"prompt": "x", "max_tokens": 4, "stream": True, "temperature": 0}),
        {"Content-Type": "application/json"})
    response = conn.getresponse()
    lines = [line for line in response.read().decode().split("\n") if line]
    conn.close()
    assert response.getheader("content-type").startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_errors_come_as_the_clients_exceptions(client, served, nano):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-5", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="context") as caught:
        client.completions.create(model="gpt-nano", prompt="x" * 120, max_tokens=20)
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        client.completions.create(model="gpt-nano", prompt="x", temperature=5)
    keyed = Served(served.engine, nano[1], api_key="k3y")  # the same engine, another key
    try:
        bad = openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=keyed.url + "/v1", api_key="k3y", max_retries=0)
        assert good.completions.create(model="gpt-nano", prompt="x", max_tokens=2).choices
    finally:
        keyed.stop()

