"""gpt2_124m under `fsdp` on 1, 2, 4 and 8 virtual CPU devices, side by side in one run.

Each device count runs `fsdp_step.py` in its own JAX process with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` and the mesh `{batch: 1, model: N}`. On a
2-core CPU the virtual devices share the same cores, so this is a figure of correctness and
overhead, not of scaling: what splitting every weight N ways, and gathering it back for each
product, costs on one machine. The bytes each device holds (weights + AdamW state, summed over
the first device's addressable shards) are reported beside the planner's and the one-device
whole.

Run: `python benchmarks/fsdp_devices.py [--devices 1,2,4,8] [--batch 8] [--seq 64] [--steps 10]`
Writes benchmarks/results/fsdp_devices.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import cpu_name, report

HERE = Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"])
    args = parser.parse_args()
    rows, base = [], None
    for count in [int(n) for n in args.devices.split(",")]:
        env = {**os.environ, "KERAS_BACKEND": "jax",
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"}
        with tempfile.TemporaryDirectory() as work:
            out = Path(work) / "step.json"
            done = subprocess.run(
                [sys.executable, str(HERE / "fsdp_step.py"), "--one-device", "--batch",
                 str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
                 "--precision", args.precision, "--out", str(out)],
                env=env, capture_output=True, text=True)
            if done.returncode != 0 or not out.exists():
                print(f"{count} devices: failed\n{done.stderr[-3000:]}", file=sys.stderr)
                continue
            result = json.loads(out.read_text())
        base = base or result["step_s"]
        rows.append({"devices": count, "step ms": round(1000 * result["step_s"], 1),
                     "tokens/s": round(result["train_tokens_per_s"]),
                     "vs 1 device": round(base / result["step_s"], 2),
                     "held MiB (first device)": round(result["held_bytes_first_device"] / 2**20, 1),
                     "planned MiB": round(result["planned_bytes"] / 2**20, 1),
                     "held / one-device whole": round(result["held_fraction"], 4)})
    report("fsdp_devices", rows, {**vars(args), "model": "gpt2_124m", "layout": "fsdp",
                                  "cpu": cpu_name(), "cores": os.cpu_count()})


if __name__ == "__main__":
    main()
