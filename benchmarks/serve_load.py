"""`kzoo serve` under load: concurrent streaming clients against continuous batching, and the
same server answering one request at a time (`--slots 1`).

Saves a random-weight preset (default the GPT-2 124M shape) as a run folder, starts
`kzoo serve` on it twice (`--slots S` and `--slots 1`), and for each number of concurrent
clients (1, 4, 16, 32) has every client stream `--requests` completions of `--new-tokens`
tokens (token-id prompts of `--prompt-tokens`, temperature 0.8, a seed per request). Reports
the time to first token (p50 / p99), tokens/s per client and in all, and writes
benchmarks/results/serve_load.json. Not run in CI.

    cd benchmarks && KERAS_BACKEND=jax ../.venv/bin/python serve_load.py   # the issue's size
    cd benchmarks && ../.venv/bin/python serve_load.py --preset gpt_nano --clients 4 \
        --new-tokens 16 --requests 2 --name serve_load_smoke                  # a smoke run
    cd benchmarks && KERAS_BACKEND=jax ../.venv/bin/python serve_load.py --num-layers 2 \
        --clients 1,16 --requests 1 --new-tokens 32 --name serve_load_small   # GPT-2's widths
                                                                              # and vocabulary
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import report

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "tensorflow"),
           TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2_124m")
    parser.add_argument("--context", type=int, default=256, help="max_sequence_length")
    parser.add_argument("--clients", default="1,4,16,32")
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--requests", type=int, default=3, help="per client")
    parser.add_argument("--new-tokens", dest="new_tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", dest="prompt_tokens", type=int, default=32)
    parser.add_argument("--num-layers", dest="num_layers", type=int,
                        help="fewer blocks than the preset's (a quick run at its widths)")
    parser.add_argument("--name", default="serve_load",
                        help="results file benchmarks/results/NAME.json (serve_load)")
    return parser.parse_args(argv)


def save_model(preset: str, context: int, folder: Path, num_layers=None) -> Path:
    extra = f", num_layers={num_layers}" if num_layers else ""
    code = ("import sys, keras; from kzoo.models import CausalLM; "
            "from kzoo.tokenizers import ByteTokenizer; keras.utils.set_random_seed(0); "
            f"m = CausalLM.from_preset({preset!r}, max_sequence_length={context}{extra}); "
            # the byte tokenizer's 257 ids must fit (gpt_nano has 256 rows by default)
            f"m = m if m.vocab_size >= 257 else CausalLM.from_preset({preset!r}, "
            f"max_sequence_length={context}, vocab_size=257{extra}); "
            "m.save(sys.argv[1] + '/model.keras'); "
            "ByteTokenizer().save(sys.argv[1] + '/tokenizer') if m.vocab_size <= 257 else None; "
            "print('VOCAB', m.vocab_size)")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], env=ENV, cwd=ROOT,
                          check=True, capture_output=True, text=True)
    vocab = int(done.stdout.split("VOCAB")[-1])
    if vocab > 257:
        # one word per id, so every id the model samples has a text (the byte tokenizer's 257
        # would leave GPT-2's 50,257 without one)
        word_tokenizer(vocab, str(folder / "tokenizer"))
    return folder


def word_tokenizer(vocab_size: int, folder: str) -> None:
    """A Hugging Face tokenizer folder with one word (`w0`, `w1`, ...) per id."""
    import tokenizers
    from tokenizers import models, pre_tokenizers

    tok = tokenizers.Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size - 1)} | {
        "<|endoftext|>": vocab_size - 1}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    Path(folder).mkdir(parents=True, exist_ok=True)
    tok.save(str(Path(folder) / "tokenizer.json"))
    (Path(folder) / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|endoftext|>", "model_max_length": 1024}))


class Server:
    def __init__(self, run: Path, slots: int):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kzoo.cli.main", "serve", str(run), "--port", "0",
             "--slots", str(slots), "--max-queue", "256", "--max-concurrent", "256"],
            env=ENV, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if "kzoo serve:" not in line:
            raise SystemExit(f"kzoo serve did not start: {line!r}")
        self.port = int(line.split(" on ")[1].split()[0].rsplit(":", 1)[1].split("/")[0])

    def stop(self):
        self.process.terminate()
        self.process.wait(60)


def stream_one(port: int, prompt: list, new_tokens: int, seed: int) -> tuple[float, float, int]:
    """(time to first token, total time, tokens) of one streamed completion."""
    body = json.dumps({"prompt": prompt, "max_tokens": new_tokens, "temperature": 0.8,
                       "seed": seed, "stream": True, "stream_options": {"include_usage": True}})
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    first, tokens = None, 0
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data: {"):
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise SystemExit(f"the server answered an error: {chunk['error']}")
        if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
            first = time.perf_counter() - start
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    conn.close()
    total = time.perf_counter() - start
    return first if first is not None else total, total, tokens


def load(port: int, clients: int, args) -> dict:
    ttfts, per_client, done_tokens = [], [], []
    barrier = threading.Barrier(clients)

    def client(c):
        barrier.wait()
        tokens, busy = 0, 0.0
        for r in range(args.requests):
            prompt = [(7 * c + 13 * r + i) % 256 for i in range(args.prompt_tokens)]
            ttft, total, n = stream_one(port, prompt, args.new_tokens, 1000 * c + r)
            ttfts.append(ttft)
            tokens, busy = tokens + n, busy + total
        per_client.append(tokens / busy)
        done_tokens.append(tokens)

    # the programs compile before the clock starts: the prefill of this prompt length too
    stream_one(port, list(range(args.prompt_tokens)), 4, 0)
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ttfts.sort()
    return {"ttft_p50_s": statistics.median(ttfts),
            "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
            "tokens_per_s_per_client": statistics.mean(per_client),
            "tokens_per_s": sum(done_tokens) / wall}


def main(argv=None):
    args = parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run = save_model(args.preset, args.context, Path(tmp), args.num_layers)
        for slots in (args.slots, 1):
            server = Server(run, slots)
            try:
                for clients in counts:
                    row = {"server": f"kzoo serve --slots {slots}", "clients": clients,
                           **load(server.port, clients, args)}
                    rows.append(row)
                    print(row, flush=True)
            finally:
                server.stop()
    report(args.name, rows, {**vars(args), "backend": ENV["KERAS_BACKEND"]})


if __name__ == "__main__":
    main()
