"""Hugging Face interop: loading a GPT-2 124M safetensors folder and greedy generation, kzoo
(`CausalLM.from_hf`, `model.generate`) vs transformers (`from_pretrained`, `generate`, torch).

The folder is made here: transformers' `GPT2LMHeadModel` with the GPT-2 small config and random
weights, saved with `save_pretrained` (float32 safetensors, ~500 MB). Every measurement runs in
a fresh subprocess, so one library's memory and threads never touch the other's:

- load: wall time of the load call alone (imports excluded), the process's peak RSS
  (`resource.getrusage(...).ru_maxrss`) and that peak minus the RSS right before the load call
  (what loading itself took; weights are float32, 124M parameters = 498 MB). transformers 5
  maps the file and touches its pages only when a weight is first used, so its load RSS is
  small; the generation rows give each process's peak RSS after generating, weights in use.
- generate: 128 new tokens after a 16-token prompt, greedy, batch 1 and 8, best of
  `--repeats` after one warm-up call (kzoo's XLA compilation is reported apart); torch runs
  with 2 threads. The last column says whether both produced the same tokens.

Run: `python benchmarks/hf_interop.py [--folder /tmp/kzoo_gpt2_124m_hf] [--repeats 2]`
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import report

PROMPT, NEW = 16, 128


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _prompts(batch):
    import numpy as np

    return np.random.default_rng(batch).integers(0, 50257, size=(batch, PROMPT))


def child(kind: str, folder: str, repeats: int) -> dict:
    """One measurement, in this (fresh) process."""
    if kind.startswith("kzoo"):
        from kzoo.models import CausalLM

        load = lambda: CausalLM.from_hf(folder)  # noqa: E731
    else:
        import torch
        import transformers

        torch.set_num_threads(2)
        load = lambda: transformers.AutoModelForCausalLM.from_pretrained(folder).eval()  # noqa
    before = _rss_mb()
    start = time.perf_counter()
    model = load()
    out = {"load_s": time.perf_counter() - start, "peak_rss_mb": _peak_mb(),
           "load_rss_mb": _peak_mb() - before}
    if not kind.endswith("generate"):
        return out
    for batch in (1, 8):
        ids = _prompts(batch)
        if kind.startswith("kzoo"):
            def run(ids=ids):
                return model.generate(ids.tolist(), max_new_tokens=NEW).token_ids
        else:
            def run(ids=ids):
                with torch.no_grad():
                    tokens = model.generate(torch.tensor(ids), max_new_tokens=NEW,
                                            min_new_tokens=NEW, do_sample=False,
                                            pad_token_id=0)
                return tokens[:, PROMPT:].tolist()
        start = time.perf_counter()
        tokens = run()  # warm-up: compiles (kzoo, XLA)
        out[f"first_call_s_b{batch}"] = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        out[f"generate_s_b{batch}"] = min(times)
        out[f"tokens_b{batch}"] = tokens
        out[f"peak_rss_mb_b{batch}"] = _peak_mb()
    return out


def _make_folder(folder: Path) -> None:
    if (folder / "model.safetensors").is_file():
        return
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(bos_token_id=None, eos_token_id=None)  # GPT-2 small
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)


def _spawn(kind, folder, repeats) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--folder", str(folder),
               "--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cpu() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in text.splitlines()
                    if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="/tmp/kzoo_gpt2_124m_hf")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.repeats)))
        return
    folder = Path(args.folder)
    start = time.time()
    _make_folder(folder)
    loads = {k: _spawn(k, folder, args.repeats) for k in ("kzoo", "transformers")}
    gens = {k: _spawn(k + "-generate", folder, args.repeats) for k in ("kzoo", "transformers")}
    rows = []
    for name in ("kzoo", "transformers"):
        rows.append({"task": "load 124M safetensors", "library": name,
                     "seconds": round(loads[name]["load_s"], 2),
                     "peak RSS MB": round(loads[name]["peak_rss_mb"]),
                     "load RSS MB": round(loads[name]["load_rss_mb"]), "same tokens": ""})
    for batch in (1, 8):
        same = gens["kzoo"][f"tokens_b{batch}"] == gens["transformers"][f"tokens_b{batch}"]
        for name in ("kzoo", "transformers"):
            g = gens[name]
            seconds = g[f"generate_s_b{batch}"]
            rows.append({"task": f"greedy {NEW} after {PROMPT}, batch {batch}", "library": name,
                         "seconds": round(seconds, 2),
                         "tokens/s": round(batch * NEW / seconds, 1),
                         "first call s": round(g[f"first_call_s_b{batch}"], 2),
                         "peak RSS MB": round(g[f"peak_rss_mb_b{batch}"]),
                         "same tokens": "yes" if same else "no"})
    keys = ["task", "library", "seconds", "tokens/s", "first call s", "peak RSS MB",
            "load RSS MB", "same tokens"]
    rows = [{k: row.get(k, "") for k in keys} for row in rows]
    settings = {"cpu": _cpu(), "torch_threads": 2, "prompt": PROMPT, "new_tokens": NEW,
                "repeats": args.repeats, "checkpoint": "GPT-2 124M shape, random, float32",
                "wall_seconds": round(time.time() - start, 1)}
    report("hf_interop", rows, settings)


if __name__ == "__main__":
    main()
