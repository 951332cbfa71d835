"""`kzoo serve` against `transformers serve --continuous-batching`: the same weights, the same
prompts, the same client, 1, 4 and 16 concurrent streaming clients.

Saves a random-weight preset (default the GPT-2 124M shape) as a kzoo run folder with a
word-per-id tokenizer (`w0`, `w1`, ...), exports it with kzoo's `save_hf` (safetensors,
config.json, tokenizer.json) and serves the run folder with `kzoo serve --slots S` and the
exported folder with `transformers serve FOLDER --continuous-batching --device cpu`, one after
the other. transformers' /v1/completions takes only a string prompt, so both get the same text
(`"w7 w20 ..."`, `--prompt-tokens` words: one token each in both tokenizers, checked from each
answer's usage.prompt_tokens). Each client streams `--requests` completions of `--new-tokens`
tokens (temperature 0.8, top_k off, top_p 1, a seed per request) with
serve_soak.stream_completion (http.client, read as an OpenAI client reads server-sent events).
Before each clock starts, one round of as many concurrent short requests as there are clients
(kzoo compiles its programs then; transformers warms its paged cache). Reports time to first
token p50 / p99, tokens/s per client and in all, and writes benchmarks/results/serve_peer.json.
Not run in CI.

transformers serve needs FastAPI, which the project's .venv does not have (and must not get):
a separate venv that sees .venv's packages (transformers 5.25, torch 2.13 CPU, uvicorn,
openai) through a .pth file, with only FastAPI installed in it:

    # once, from the repository root (the same Python as .venv's)
    "$(.venv/bin/python -c 'import sys; print(sys.base_prefix)')/bin/python3" -m venv /tmp/tserve
    echo "$PWD/.venv/lib/python3.11/site-packages" \\
        > /tmp/tserve/lib/python3.11/site-packages/kzoo_venv.pth
    /tmp/tserve/bin/pip install fastapi
    cd benchmarks && ../.venv/bin/python serve_peer.py                          # the issue's size
    cd benchmarks && KERAS_BACKEND=jax ../.venv/bin/python serve_peer.py \\
        --name serve_peer_jax                                                   # kzoo on JAX
    cd benchmarks && ../.venv/bin/python serve_peer.py --num-layers 2 --clients 1,4 \\
        --requests 1 --new-tokens 16 --name serve_peer_small  # GPT-2's widths and vocabulary
    cd benchmarks && ../.venv/bin/python serve_peer.py --preset gpt_nano --clients 1,4,16 \\
        --requests 2 --new-tokens 16 --name serve_peer_smoke                    # a smoke run

It runs offline (HF_HUB_OFFLINE=1: the model and tokenizer are a local folder) and on CPU with
continuous batching (paged attention in eager torch). The model's generation_config.json gets
`do_sample: true, top_k: 0`: transformers serve samples only when the model's generation config
says so (a request's temperature alone leaves it greedy) and would otherwise cut to its default
top-k of 50, which kzoo does not. If transformers serve with --continuous-batching does not
start, the script measures it without (one request generated at a time) and says so in the
row's `server` and in the settings' `notes`.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import report
from serve_load import ENV, ROOT
from serve_soak import get_json, prepare_run, start_kzoo, stop, stream_completion

TSERVE = "/tmp/tserve/bin/python"
EXPORT = """
import json, sys
from pathlib import Path
from kzoo.interop.hf import save_hf
from kzoo.models.sources import find_model_source
from kzoo.tokenizers.hf import from_hf
run, out = Path(sys.argv[1]), Path(sys.argv[2])
model = find_model_source(str(run), "model.keras", what="MODEL").load_model()
save_hf(model, out, from_hf(run / "tokenizer"))
config = json.loads((out / "generation_config.json").read_text())
config.update(do_sample=True, top_k=0, top_p=1.0)
(out / "generation_config.json").write_text(json.dumps(config, indent=2))
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2_124m")
    parser.add_argument("--context", type=int, default=256, help="max_sequence_length")
    parser.add_argument("--num-layers", dest="num_layers", type=int,
                        help="fewer blocks than the preset's (a quick run at its widths)")
    parser.add_argument("--name", default="serve_peer",
                        help="results file benchmarks/results/NAME.json (serve_peer)")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--slots", type=int, default=16, help="kzoo serve --slots")
    parser.add_argument("--requests", type=int, default=3, help="per client")
    parser.add_argument("--new-tokens", dest="new_tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", dest="prompt_tokens", type=int, default=32)
    parser.add_argument("--transformers-python", dest="tpython",
                        default=TSERVE if Path(TSERVE).exists() else sys.executable,
                        help="a Python with transformers and FastAPI (default /tmp/tserve)")
    parser.add_argument("--transformers-args", dest="targs", default="",
                        help="more `transformers serve` options, e.g. '--cb-num-blocks 64'")
    parser.add_argument("--servers", default="kzoo,transformers",
                        help="which to measure, in this order")
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_transformers(folder: Path, python: str, logs: Path, batching: bool, extra: str = "",
                       timeout_s: float = 600.0):
    """`transformers serve folder` on a free loopback port: (process, port), or None with the
    reason when it does not answer /health within `timeout_s` or exits."""
    port = free_port()
    # typer's app directly: the `transformers` script's main() first asks the Hub for updates
    command = [python, "-c", "import sys; from transformers.cli.transformers import app; "
               "sys.argv[0] = 'transformers'; app()", "serve", str(folder),
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
               *(["--continuous-batching"] if batching else []), *shlex.split(extra)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1")
    log = logs / f"transformers{'_cb' if batching else ''}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, cwd=folder, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if get_json(port, "/health", timeout=5).get("status") == "ok":
                return proc, port
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(1)
    stop(proc)
    return None, log.read_text()[-1500:]


def prompt_text(client: int, request: int, length: int) -> str:
    return " ".join(f"w{(7 * client + 13 * request + i) % 256}" for i in range(length))


def body(prompt: str, new_tokens: int, seed: int) -> dict:
    return {"prompt": prompt, "max_tokens": new_tokens, "temperature": 0.8, "top_p": 1.0,
            "seed": seed, "stream_options": {"include_usage": True}}


def load(port: int, clients: int, args) -> dict:
    """serve_load.load's measurement with text prompts: every client streams its requests one
    after another, all clients at once."""
    ttfts, per_client, done_tokens, prompt_tokens, errors = [], [], [], set(), []
    barrier = threading.Barrier(clients, timeout=600)

    def client(c):
        barrier.wait()
        tokens, busy = 0, 0.0
        for r in range(args.requests):
            result = stream_completion(port, body(prompt_text(c, r, args.prompt_tokens),
                                                  args.new_tokens, 1000 * c + r))
            if result["error"] or not result["usage"]:
                errors.append(result["error"] or "no usage chunk")
                return
            ttfts.append(result["ttft_s"])
            prompt_tokens.add(result["usage"]["prompt_tokens"])
            tokens += result["usage"]["completion_tokens"]
            busy += result["total_s"]
        per_client.append(tokens / busy)
        done_tokens.append(tokens)

    def run_all(target, n):
        threads = [threading.Thread(target=target, args=(c,), daemon=True) for c in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:  # every request has a 600 s socket timeout
            thread.join(600 * (args.requests + 1))

    # the clock starts after a round of as many short requests at once (compiles, warm caches)
    run_all(lambda c: stream_completion(port, body(prompt_text(c, 99, args.prompt_tokens), 4, c)),
            clients)
    start = time.perf_counter()
    run_all(client, clients)
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} requests failed; the first: {errors[0]}")
    ttfts.sort()
    return {"ttft_p50_s": statistics.median(ttfts),
            "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
            "tokens_per_s_per_client": statistics.mean(per_client),
            "tokens_per_s": sum(done_tokens) / wall,
            "new_tokens": sum(done_tokens),
            "prompt_tokens": sorted(prompt_tokens)}


def measure(name: str, port: int, counts: list[int], args, rows: list) -> None:
    for clients in counts:
        row = {"server": name, "clients": clients, **load(port, clients, args)}
        rows.append(row)
        print(row, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run, hf = tmp / "run", tmp / "hf"
        run.mkdir()
        prepare_run(args.preset, args.context, run, args.num_layers)
        subprocess.run([sys.executable, "-c", EXPORT, str(run), str(hf)], env=ENV, cwd=ROOT,
                       check=True, capture_output=True, text=True)
        for server in args.servers.split(","):
            if server == "kzoo":
                proc, port = start_kzoo(run, args.slots, tmp)
                name = f"kzoo serve --slots {args.slots}"
            elif server == "transformers":
                proc, port = start_transformers(hf, args.tpython, tmp, True, args.targs)
                name = "transformers serve --continuous-batching"
                if proc is None:
                    notes.append(f"transformers serve --continuous-batching did not start: "
                                 f"{port.splitlines()[-1] if port else ''}")
                    print(notes[-1], flush=True)
                    proc, port = start_transformers(hf, args.tpython, tmp, False, args.targs)
                    name = "transformers serve (no continuous batching)"
                if proc is None:
                    raise SystemExit(f"transformers serve did not start: {port}")
            else:
                raise SystemExit(f"--servers: {server!r} is not kzoo or transformers")
            try:
                measure(name, port, counts, args, rows)
            finally:
                stop(proc)
    if len({tuple(r["prompt_tokens"]) for r in rows}) > 1:
        notes.append("the servers counted different prompt lengths: "
                     f"{sorted({tuple(r['prompt_tokens']) for r in rows})}")
    for clients in counts:  # kzoo's aggregate tokens/s over transformers' at each load
        speed = {r["server"].split()[0]: r["tokens_per_s"] for r in rows
                 if r["clients"] == clients}
        if len(speed) == 2:
            notes.append(f"{clients} clients: kzoo / transformers tokens/s = "
                         f"{speed['kzoo'] / speed['transformers']:.2f}")
    for note in notes:
        print(note)
    report(args.name, rows, {**vars(args), "backend": ENV["KERAS_BACKEND"], "notes": notes})
    return 0


if __name__ == "__main__":
    sys.exit(main())
