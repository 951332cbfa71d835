"""Peak memory and step time of fine-tuning the 124M shape: full vs LoRA, remat, accumulation.

Each configuration runs in a fresh Python process (peak resident memory, `ru_maxrss`, only
grows, so processes cannot share), trains `--steps` optimizer updates on random tokens with
AdamW and reports: the process's peak RSS, the RSS once the model is built (TensorFlow and the
weights), their difference (what training adds: gradients, optimizer slots, activations) and
the fastest update's time. Every configuration has the same effective batch; with gradient
accumulation it is split into `--micro` micro-batches (one update = that many `train_on_batch`
calls). LoRA is rank 8 on every projection (query_key_value, attention_output, up, down).

Run: `python benchmarks/lora_memory.py [--preset gpt2_124m] [--batch 4] [--seq 128]`
"""

import argparse
import json
import os
import subprocess
import sys

from _common import report

CONFIGS = {
    "full": dict(lora=False, remat=False, micro=1),
    "full + remat": dict(lora=False, remat=True, micro=1),
    "full + accumulation": dict(lora=False, remat=False, micro=None),
    "LoRA r8": dict(lora=True, remat=False, micro=1),
    "LoRA r8 + remat": dict(lora=True, remat=True, micro=1),
    "LoRA r8 + accumulation": dict(lora=True, remat=False, micro=None),
}


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args) -> None:
    import resource
    import time

    import keras
    import numpy as np

    from kzoo.models import CausalLM
    from kzoo.training.optimizers import AdamW

    config = json.loads(args.child)
    micro = config["micro"] or args.micro
    keras.utils.set_random_seed(0)
    model = CausalLM.from_preset(args.preset, max_sequence_length=args.seq,
                                 remat=config["remat"])
    if config["lora"]:
        model.enable_lora(8)
    optimizer = AdamW(1e-4, weight_decay=0.1, global_clipnorm=1.0,
                      gradient_accumulation_steps=micro if micro > 1 else None)
    model.compile(optimizer=optimizer)
    built = rss_mb()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.vocab_size, (args.batch, args.seq + 1)).astype("int32")
    parts = np.array_split(ids, micro)
    times = []
    for _ in range(args.steps + 1):  # the first update traces the step
        start = time.perf_counter()
        for part in parts:
            model.train_on_batch(part[:, :-1], part[:, 1:])
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    print(json.dumps({"peak_mb": peak, "built_mb": built, "s_per_update": min(times[1:]),
                      "trainable": trainable, "micro": micro}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2_124m")
    parser.add_argument("--batch", type=int, default=4, help="rows per optimizer update")
    parser.add_argument("--seq", type=int, default=128, help="tokens per row")
    parser.add_argument("--micro", type=int, default=2, help="micro-batches when accumulating")
    parser.add_argument("--steps", type=int, default=2, help="timed updates (after one)")
    parser.add_argument("--only", default=None, help="comma-separated configuration names")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    names = args.only.split(",") if args.only else list(CONFIGS)
    rows = []
    for name in names:
        command = [sys.executable, __file__, "--preset", args.preset, "--batch",
                   str(args.batch), "--seq", str(args.seq), "--micro", str(args.micro),
                   "--steps", str(args.steps), "--child", json.dumps(CONFIGS[name])]
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        if out.returncode:
            sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"configuration": name, "micro-batches": result["micro"],
                     "trainable params": float(result["trainable"]),
                     "peak RSS MB": result["peak_mb"], "RSS built MB": result["built_mb"],
                     "training adds MB": result["peak_mb"] - result["built_mb"],
                     "s/update": result["s_per_update"]})
        print(f"{name}: {result}", flush=True)
    report("lora_memory", rows, vars(args))


if __name__ == "__main__":
    main()
