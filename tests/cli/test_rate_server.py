"""`kzoo rate`'s server (Starlette on uvicorn) against what a security review asked for: a token
off loopback, a body size limit, clean JSON errors for malformed requests, anti-framing headers,
many concurrent raters; and the command's fixes: `--port` out of range, unit ids that name the
model and sampler, the header's totals after a restart, no TensorFlow for `--candidates`.
Servers listen on 127.0.0.1, on a free port, and stop at the end of each test."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from kzoo.cli import rate
from kzoo.cli.rate.server import RateApp, make_server
from kzoo.cli.rate.sources import read_candidates
from kzoo.cli.rate.store import RatingStore, sibling_paths

ITEMS = [{"prompt": f"Q: {n}+{n}?\nA:", "completions": [f" {2 * n}", f" {n}"]} for n in range(4)]


def _candidates(path: Path) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    return path


@pytest.fixture
def served(tmp_path, request):
    """(port, app) of a server on 127.0.0.1 in a thread; `request.param`: its token."""
    store = RatingStore(tmp_path / "ratings.jsonl")
    app = RateApp(read_candidates(_candidates(tmp_path / "c.jsonl")), store, {"model": None})
    server = make_server("127.0.0.1", 0, app, token=getattr(request, "param", None))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], app
    server.shutdown()
    thread.join(10)
    server.server_close()
    store.close()


def raw(port: int, data: bytes, timeout: float = 20) -> tuple[int, dict, bytes]:
    """Send `data` as is; (status, lower-case headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):  # answered before all was sent
            pass
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
                _headers(answer).get("content-length", 10**9)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), _headers(answer), body


def _headers(answer: bytes) -> dict:
    lines = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}


def get(port, path, headers="") -> tuple[int, dict, bytes]:
    return raw(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}"
                     "Connection: close\r\n\r\n".encode())


def post(port, body: bytes, headers="") -> tuple[int, dict, bytes]:
    return raw(port, f"POST /api/judge HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Content-Type: application/json\r\n{headers}"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)


def test_every_answer_forbids_framing(served):
    port, _ = served
    for path, status in (("/", 200), ("/rate.js", 200), ("/api/next?client=a", 200),
                         ("/nope", 404)):
        code, headers, body = get(port, path)
        assert code == status, body
        assert headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert json.loads(body) == {"error": "no such path /nope"}


def test_a_50_mb_correction_gets_413_and_nothing_is_stored(served):
    port, app = served
    unit = app.next_payload("tab", "pairs")["unit"]
    head = (f"POST /api/judge HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
            "application/json\r\nContent-Length: 52428800\r\nConnection: close\r\n\r\n")
    start = json.dumps({"client": "tab", "id": unit["id"], "judgement": "edit",
                        "base": "left", "text": ""})[:-2]
    code, _, body = raw(port, head.encode() + start.encode() + b"x" * (1 << 16))
    assert code == 413 and "at most" in json.loads(body)["error"]
    # Chunked: no Content-Length to check first; counted as it arrives.
    text = "x" * (2 << 20)
    payload = json.dumps({"client": "tab", "id": unit["id"], "judgement": "edit",
                          "base": "left", "text": text}).encode()
    chunked = (f"POST /api/judge HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
               "application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
               ).encode() + f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n"
    assert raw(port, chunked)[0] == 413
    assert not app.store.judged and not sibling_paths(app.store.paths["pairs"])["pairs"].exists()


@pytest.mark.parametrize("case", ["not_utf8", "deeply_nested", "length_abc", "length_huge",
                                  "length_negative", "not_an_object"])
def test_malformed_requests_get_a_json_4xx(served, case):
    port, app = served
    body = {"not_utf8": b'{"judgement": "\xff\xfe"}', "deeply_nested": b"[" * 100_000,
            "not_an_object": b"[1, 2]"}.get(case, b"{}")
    length = {"length_abc": "abc", "length_huge": "1000000000000",
              "length_negative": "-1"}.get(case, str(len(body)))
    code, headers, answer = raw(port, (
        f"POST /api/judge HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json"
        f"\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n").encode() + body)
    assert 400 <= code < 500, answer
    assert headers["content-type"].startswith("application/json")
    assert set(json.loads(answer)) == {"error"}
    assert not app.store.judged
    assert get(port, "/api/next?client=a")[0] == 200  # and the server goes on answering


@pytest.mark.parametrize("served", ["s3cret-token"], indirect=True)
def test_a_token_is_checked_on_every_request(served):
    port, app = served
    unit = app.next_payload("tab", "pairs")["unit"]
    judgement = json.dumps({"client": "tab", "id": unit["id"], "judgement": "left"}).encode()
    for path in ("/", "/rate.js", "/api/next?client=a", "/?token=wrong"):
        code, _, body = get(port, path)
        assert code == 401 and "token" in json.loads(body)["error"]
    assert post(port, judgement)[0] == 401 and not app.store.judged
    code, headers, _ = get(port, "/?mode=pairs&token=s3cret-token")
    assert code == 200
    cookie = headers["set-cookie"].split(";")[0]
    assert cookie == f"kzoo-rate-token-{port}=s3cret-token"
    assert "httponly" in headers["set-cookie"].lower()
    # The page's own requests carry the cookie; a program may send a Bearer header.
    assert get(port, "/api/next?client=a", f"Cookie: {cookie}\r\n")[0] == 200
    assert get(port, "/api/next?client=a", "Authorization: Bearer s3cret-token\r\n")[0] == 200
    assert post(port, judgement, f"Cookie: {cookie}\r\n")[0] == 200
    assert app.store.judged == {unit["id"]}


def test_thirty_two_raters_at_once_are_all_answered(served):
    port, _ = served
    barrier, codes = threading.Barrier(32), []

    def rater(n):
        barrier.wait()
        codes.append(get(port, f"/api/next?client=tab{n}")[0])

    threads = [threading.Thread(target=rater, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert codes == [200] * 32


def test_half_sent_requests_do_not_hold_a_connection(served, monkeypatch):
    from kzoo.cli.rate import asgi

    port, _ = served
    monkeypatch.setattr(asgi, "HEAD_TIMEOUT_S", 0.5)
    monkeypatch.setattr(asgi, "BODY_TIMEOUT_S", 0.5)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1")  # and nothing more
        assert sock.recv(1024) == b""  # closed by the server, well before the 10 s
    code, _, body = raw(port, (f"POST /api/judge HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                               "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                               '{"id"').encode())
    assert code == 408 and "did not arrive" in json.loads(body)["error"]


def test_twenty_raters_connecting_while_it_is_busy_are_queued_not_dropped(tmp_path):
    # Nobody accepts yet (as while the server is busy): the kernel completes each handshake
    # only while the listen backlog has room (5 used to leave the others hanging, then reset).
    store = RatingStore(tmp_path / "ratings.jsonl")
    server = make_server("127.0.0.1", 0, RateApp([], store, {}))
    clients = []
    try:
        for _ in range(20):
            clients.append(socket.create_connection(server.server_address, timeout=2))
    finally:
        for client in clients:
            client.close()
        server.server_close()
        store.close()
    assert len(clients) == 20


def test_token_and_port_rules_of_the_command(tmp_path, capsys):
    def token(*flags):
        return rate._token(rate.parse_args(["--candidates", "c.jsonl", "--out", "o.jsonl",
                                            *flags]))

    assert token() is None and token("--host", "localhost") is None
    made = token("--host", "0.0.0.0")
    assert len(made) >= 30 and made != token("--host", "0.0.0.0")
    assert token("--host", "10.1.2.3", "--token", "mine") == "mine"
    with pytest.raises(ValueError, match="--token"):
        token("--token", "a b;c")
    out = tmp_path / "ratings.jsonl"
    code = rate.main(["--candidates", str(_candidates(tmp_path / "c.jsonl")), "--out",
                      str(out), "--port", "99999"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--port 99999: must be in 0..65535" in err[0]
    assert list(tmp_path.iterdir()) == [tmp_path / "c.jsonl"]


def test_the_printed_address_carries_the_token(tmp_path):
    args = rate.parse_args(["--candidates", str(_candidates(tmp_path / "c.jsonl")), "--out",
                            str(tmp_path / "r.jsonl"), "--port", "0", "--token", "tok"])
    lines = []
    server, store = rate.start(args, out=_Lines(lines))
    server.server_close()
    store.close()
    assert f"http://127.0.0.1:{server.server_address[1]}/?mode=pairs&token=tok" in lines[-1]


class _Lines:
    def __init__(self, lines):
        self.lines = lines

    def write(self, text):
        if text.strip():
            self.lines.append(text)

    def flush(self):
        pass


def test_new_model_or_sampler_samples_again_and_a_restart_shows_the_totals(tmp_path):
    import keras

    from kzoo.models import CausalLM
    from kzoo.tokenizers import ByteTokenizer

    run = tmp_path / "run"
    run.mkdir()
    keras.utils.set_random_seed(0)
    CausalLM(vocab_size=257, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
             max_sequence_length=64).save(run / "model.keras")
    ByteTokenizer().save(run / "tokenizer")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello\nThe cat\nOnce upon\n")
    out = tmp_path / "ratings.jsonl"

    def session(*flags):
        lines = []
        args = rate.parse_args(["--run", str(run), "--prompts", str(prompts), "--out",
                                str(out), "--port", "0", "--seed", "1", "--max-new-tokens",
                                "3", *flags])
        server, store = rate.start(args, out=_Lines(lines))
        app = server.app
        app.live.join(120)
        assert app.live.error is None
        return server, store, app, lines[0]

    server, store, app, said = session()
    assert "sampling 3 prompts" in said
    unit = app.next_payload("tab", "pairs")["unit"]
    assert app.judge({"client": "tab", "id": unit["id"], "judgement": "left"})["recorded"]
    server.server_close()
    store.close()
    # The same model and sampler again: the judged prompt is not sampled again, and the
    # header counts it ("1 / 3 judged", not "0 / 2").
    server, store, app, said = session()
    assert "sampling 2 prompts with seed 1 (1 judged before)" in said
    assert app.next_payload("tab", "pairs")["progress"] == {"judged": 1, "total": 3}
    assert app.next_payload("tab", "thumbs")["progress"] == {"judged": 2, "total": 6}
    server.server_close()
    store.close()
    # Other sampler settings into the same --out: every prompt is sampled again.
    server, store, app, said = session("--top-k", "5")
    assert "sampling 3 prompts" in said
    assert app.next_payload("tab", "pairs")["progress"] == {"judged": 0, "total": 3}
    server.server_close()
    store.close()


def test_an_older_out_file_still_counts_its_judgements(tmp_path):
    """Meta lines of an older kzoo (ids: the prompt's hash alone) match the same sampling."""
    from kzoo.cli.rate.sources import prompt_id

    out = tmp_path / "ratings.jsonl"
    provenance = {"model": "runs/x", "sampler": {"name": "top_k"}, "max_new_tokens": 64,
                  "template": "raw"}
    store = RatingStore(out)
    store.add(prompt_id("Hello"), "tie", None, None, provenance)
    store.close()
    store = RatingStore(out)
    setting = {**provenance, "model": "/abs/runs/x", "model_file": "model.keras"}
    todo = rate._todo(["Hello", "Bye"], store, provenance, setting)
    assert todo == [(1, "Bye")]
    other = {**provenance, "max_new_tokens": 32}
    assert rate._todo(["Hello", "Bye"], store, other, {**setting, "max_new_tokens": 32}) == [
        (0, "Hello"), (1, "Bye")]
    store.close()


@pytest.mark.parametrize("command", [["-m", "kzoo.cli.rate"], ["-m", "kzoo.cli", "rate"]],
                         ids=["module", "kzoo-command"])
def test_candidates_import_no_tensorflow(tmp_path, command):
    # The command's own process, seen from inside: a sitecustomize writes its sys.modules at exit.
    hook = tmp_path / "hook"
    hook.mkdir()
    report = tmp_path / "modules.json"
    (hook / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import atexit, json, sys
        atexit.register(lambda: open({str(report)!r}, "w").write(json.dumps(
            [m for m in ("tensorflow", "keras", "starlette", "uvicorn") if m in sys.modules])))
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(hook), str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, *command, "--candidates",
                             str(_candidates(tmp_path / "c.jsonl")), "--out",
                             str(tmp_path / "r.jsonl"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, proc.stderr.read() if proc.poll() else line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        assert get(port, "/api/next?client=a")[0] == 200
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr.read() == ""
    assert json.loads(report.read_text()) == ["starlette", "uvicorn"]
