"""Every malformed request gets one OpenAI error body with the right status, never a
traceback; random JSON bodies (hypothesis) never stop the server from answering."""

import json
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve.helpers import post


def _is_error(body, status):
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str) and "Traceback" not in error["message"]
    return status


def raw(port, data: bytes):
    """(status, body) of a hand-written request."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


VALUES = [  # (field, value, status) on /v1/completions with prompt "hi"
    ("temperature", "hot", 422), ("temperature", -1, 422), ("temperature", float("inf"), 422),
    ("top_p", 0, 422), ("top_p", 1.5, 422), ("top_k", -2, 422), ("min_p", 2, 422),
    ("n", 0, 422), ("n", 99, 422), ("max_tokens", -1, 422), ("max_tokens", 10**6, 422),
    ("max_tokens", 2.5, 422), ("logprobs", 50, 422), ("seed", "x", 422), ("echo", "yes", 422),
    ("stop", ["a", "b", "c", "d", "e"], 422), ("stop", [""], 422), ("stop", 7, 422),
    ("stream", 1, 422), ("model", "gpt-5", 404), ("model", 3, 422), ("presence_penalty", 1, 422),
    ("logit_bias", {"1": 5}, 422), ("suffix", "x", 422), ("best_of", 3, 422),
    ("stream_options", "x", 422),
]


@pytest.mark.parametrize("field,value,status", VALUES, ids=[f"{f}={v!r}"[:30] for f, v, _
                                                             in VALUES])
def test_an_invalid_value_names_its_field(served, field, value, status):
    if value == float("inf"):  # Python's JSON reads Infinity: a number, and not a finite one
        code, _, body = post(served.port, "/v1/completions", None,
                             raw=b'{"prompt": "hi", "temperature": Infinity}')
    else:
        code, _, body = post(served.port, "/v1/completions", {"prompt": "hi", field: value})
    assert _is_error(body, code) == status
    if status == 422:
        assert body["error"]["param"] == field and field in body["error"]["message"]


PROMPTS = [None, "", [], [[]], [300], [-1], [[1, 2], "x", 3], {"a": 1}, True, [True]]


@pytest.mark.parametrize("prompt", PROMPTS, ids=[repr(p) for p in PROMPTS])
def test_a_missing_empty_or_malformed_prompt_is_a_422(served, prompt):
    body = {} if prompt is None else {"prompt": prompt}
    code, _, answer = post(served.port, "/v1/completions", body)
    assert _is_error(answer, code) == 422 and answer["error"]["param"] == "prompt"


MESSAGES = [None, [], "hi", [{"role": "robot", "content": "x"}], [{"role": "user"}],
            [{"role": "user", "content": 5}], [{"role": "user", "content": [{"type": "image"}]}],
            ["hi"]]


@pytest.mark.parametrize("messages", MESSAGES, ids=[repr(m)[:30] for m in MESSAGES])
def test_malformed_chat_messages_are_a_422(served, messages):
    body = {} if messages is None else {"messages": messages}
    code, _, answer = post(served.port, "/v1/chat/completions", body)
    assert _is_error(answer, code) == 422 and "messages" in answer["error"]["param"]


def test_unknown_fields_are_ignored_and_too_long_prompts_refused(served):
    code, _, body = post(served.port, "/v1/completions",
                         {"prompt": "hi", "max_tokens": 2, "user": "me", "whatever": [1]})
    assert code == 200 and body["choices"][0]["finish_reason"] == "length"
    code, _, body = post(served.port, "/v1/completions", {"prompt": "x" * 200})
    assert _is_error(body, code) == 400 and body["error"]["code"] == "context_length_exceeded"
    code, _, body = post(served.port, "/v1/completions", {"prompt": "x", "max_tokens": 0})
    assert _is_error(body, code) == 422


BODIES = [
    (b"\xff\xfe not utf-8", 400), (b"[" * 100000 + b"]" * 100000, 400), (b"{not json", 400),
    (b"[1, 2]", 400), (b'"text"', 400),
]


@pytest.mark.parametrize("data,status", BODIES, ids=["utf8", "nested", "json", "array", "str"])
def test_a_body_that_is_not_a_json_object_is_a_400(served, data, status):
    code, _, body = post(served.port, "/v1/completions", None, raw=data)
    assert _is_error(body, code) == status


@pytest.mark.parametrize("length,status", [("abc", 400), ("-1", 400),
                                           ("1000000000000", 413)])
def test_bad_content_lengths(served, length, status):
    code, body = raw(served.port, (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:"
                                   f"{served.port}\r\nContent-Type: application/json\r\n"
                                   f"Content-Length: {length}\r\nConnection: close\r\n\r\n{{}}"
                                   ).encode())
    assert _is_error(body, code) == status


def test_too_large_unknown_path_wrong_method_and_foreign_host(served):
    code, _, body = post(served.port, "/v1/completions", None,
                         raw=b'{"prompt": "' + b"x" * (9 << 20) + b'"}')
    assert _is_error(body, code) == 413
    code, _, body = post(served.port, "/v1/nothing", {})
    assert _is_error(body, code) == 404
    code, body = raw(served.port, f"GET /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:"
                     f"{served.port}\r\nConnection: close\r\n\r\n".encode())
    assert _is_error(body, code) == 405
    code, _, body = post(served.port, "/v1/models", {}, headers={"Host": "evil.example:80"})
    assert code in (403, 405) and _is_error(body, code)


FIELDS = {
    "prompt": st.one_of(st.text(max_size=20), st.lists(st.integers(-5, 300), max_size=5),
                        st.lists(st.text(max_size=5), max_size=3), st.none(), st.integers()),
    "messages": st.one_of(st.none(), st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "x"]),
         "content": st.one_of(st.text(max_size=10), st.integers())}), max_size=2)),
    "max_tokens": st.one_of(st.integers(-3, 8), st.none(), st.floats(), st.text(max_size=3)),
    "temperature": st.one_of(st.floats(-1, 3), st.none(), st.booleans()),
    "top_p": st.one_of(st.floats(-1, 2), st.none()), "top_k": st.integers(-3, 300),
    "n": st.integers(-1, 10), "stop": st.one_of(st.text(max_size=3), st.lists(st.text(
        max_size=3), max_size=6), st.integers()),
    "logprobs": st.one_of(st.integers(-1, 30), st.booleans()), "echo": st.booleans(),
    "seed": st.one_of(st.integers(), st.text(max_size=3)), "stream": st.booleans(),
    "model": st.sampled_from(["gpt-nano", "other", None]),
}
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                        st.text(max_size=5), inner, max_size=3), max_leaves=10)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
       body=st.one_of(st.fixed_dictionaries({}, optional=FIELDS), JSON))
def test_random_bodies_get_an_error_or_a_completion(served, path, body):
    code, headers, answer = post(served.port, path, body)
    if code == 200:
        if isinstance(answer, str):  # a stream
            assert answer.rstrip().endswith("data: [DONE]")
        else:
            assert answer["choices"] and "usage" in answer
    else:
        assert code in (400, 404, 413, 422, 429) and _is_error(answer, code)
    assert post(served.port, "/v1/completions", {"prompt": [1], "max_tokens": 1})[0] == 200
