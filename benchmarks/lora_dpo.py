"""LoRA vs full fine-tuning for DPO and for int8 SFT: accuracy gain, held-out loss, memory, time.

Every configuration runs in a fresh subprocess, so its peak resident memory (`ru_maxrss`) is its
own; "training memory" is that peak minus the resident memory measured once TensorFlow and the data
are loaded, before the model is built: the model's weights, gradients, optimizer moments,
activations, reference log-probs and compiled programs.

Part 1, quality, on the instruction set (`KZOO_TEST_DATA` or `--data`), byte tokens, `--preset`
(default gpt_baby): one shared SFT start (`--sft-epochs` on instruction-data.json), then

- DPO full: every weight trained, reference log-probs precomputed (no second model);
- DPO LoRA r8: adapters on every projection, reference = the same network with adapters off;

with the same pairs, steps, batch and seed (LoRA's learning rate is `--lora-lr-factor` x the
full one, as usual for adapters). Reported: held-out implicit-reward accuracy before/after, the
LoRA gain over chance (0.5: at step 0 every reward is 0) as a share of the full run's (target
>= 90%), training memory and step time.

- SFT LoRA r8 in float32 vs on an int8 base (QLoRA-style): held-out response loss before/after
  from the same start; target: the int8 gain within 10% of the float gain.

Part 2, memory at the 124M shape (`gpt2_124m`, byte vocabulary): a few DPO steps full vs LoRA,
peak and training memory, step time (target: LoRA < half the full run's training memory).

Run: `python benchmarks/lora_dpo.py` (about 10 minutes on 2 cores); `--quick` for a smoke run.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import report

HERE = Path(__file__).resolve().parent


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pairs(data_dir, max_length):
    from kzoo.data.instruction import split_records
    from kzoo.data.preference import encode_pairs, read_preference_records
    from kzoo.tokenizers import ByteTokenizer

    records, _ = read_preference_records(Path(data_dir) / "instruction-preference.json")
    train, val = split_records(records, 0.1, 0)
    tok = ByteTokenizer()
    return [encode_pairs(rs, tok, max_length, "plain") for rs in (train, val)]


def _sft_arrays(data_dir, max_length):
    from kzoo.data.instruction import encode_sft, read_instruction_records, split_records
    from kzoo.tokenizers import ByteTokenizer

    records = read_instruction_records(Path(data_dir) / "instruction-data.json")
    train, val = split_records(records, 0.1, 0)
    return [encode_sft(rs, ByteTokenizer(), max_length, "plain") for rs in (train, val)]


def child_sft_start(opts) -> dict:
    """The shared starting point: SFT of a fresh model, saved as a .keras file."""
    import keras

    from kzoo.alignment.sft import compile_sft
    from kzoo.data.instruction import sft_dataset
    from kzoo.models import CausalLM

    keras.utils.set_random_seed(0)
    train, _ = _sft_arrays(opts["data"], opts["max_length"])
    model = CausalLM.from_preset(opts["preset"], vocab_size=257,
                                 max_sequence_length=opts["max_length"])
    compile_sft(model, keras.optimizers.AdamW(1e-3), jit_compile=True)
    model.fit(sft_dataset(train, 16, seed=0), epochs=opts["sft_epochs"], verbose=0)
    model.save(opts["out"])
    return {}


def child_dpo(opts) -> dict:
    import keras
    import numpy as np

    from kzoo.alignment.dpo import DPOModel, compute_reference_logps
    from kzoo.data.preference import preference_dataset
    from kzoo.models import CausalLM
    from kzoo.models.loading import load_model_file

    keras.utils.set_random_seed(0)
    train, val = _pairs(opts["data"], opts["max_length"])
    base = rss_mib()  # TensorFlow and the data: what any run of this process holds
    if opts.get("start"):
        policy = load_model_file(opts["start"], compile=False, expect=CausalLM)
    else:
        policy = CausalLM.from_preset(opts["preset"], vocab_size=257,
                                      max_sequence_length=opts["max_length"])
    lr = opts["lr"]
    policy.remat = opts.get("remat", False)
    if opts["lora"]:
        policy.enable_lora(opts["rank"])
        reference, lr = "adapters_off", lr * opts["lora_lr_factor"]
    else:
        reference = None
        for arrays in (train, val):
            arrays["reference_logps"] = compute_reference_logps(policy, arrays, batch_size=16)
    dpo = DPOModel(policy, reference, loss="sigmoid", beta=0.1)
    dpo.compile(optimizer=keras.optimizers.Adam(lr), jit_compile=opts.get("jit", True))
    val_ds = preference_dataset(val, opts["batch"], shuffle=False)
    before = dpo.evaluate(val_ds, verbose=0, return_dict=True) if opts["evaluate"] else {}
    train_ds = preference_dataset(train, opts["batch"], seed=0, drop_remainder=True).repeat()
    batches = iter(train_ds)
    dpo.train_on_batch(next(batches))  # compile outside the timing
    start = time.perf_counter()
    for _ in range(opts["steps"] - 1):
        dpo.train_on_batch(next(batches))
    step_s = (time.perf_counter() - start) / max(1, opts["steps"] - 1)
    after = dpo.evaluate(val_ds, verbose=0, return_dict=True) if opts["evaluate"] else {}
    trainable = int(sum(np.prod(v.shape) for v in policy.trainable_weights))
    return {"before": before.get("rewards/accuracy"), "after": after.get("rewards/accuracy"),
            "step_s": step_s, "rss_before_model_mib": base, "peak_mib": peak_mib(),
            "trainable": trainable}


def child_sft_lora(opts) -> dict:
    import keras

    from kzoo.alignment.sft import compile_sft, response_nll
    from kzoo.data.instruction import sft_dataset
    from kzoo.models import CausalLM
    from kzoo.models.loading import load_model_file
    from kzoo.training.lora import LoRAConfig, apply_lora_config

    keras.utils.set_random_seed(0)
    train, val = _sft_arrays(opts["data"], opts["max_length"])
    model = load_model_file(opts["start"], compile=False, expect=CausalLM)
    before_float = response_nll(model, val)
    apply_lora_config(model, LoRAConfig(enabled=True, rank=opts["rank"],
                                        quantize=opts["quantize"]))
    before = response_nll(model, val)  # int8 rounding shows here
    compile_sft(model, keras.optimizers.AdamW(opts["lr"] * opts["lora_lr_factor"]),
                jit_compile=True)
    model.fit(sft_dataset(train, 16, seed=0), epochs=opts["sft_epochs"], verbose=0)
    return {"loss_float_start": before_float, "before": before,
            "after": response_nll(model, val), "peak_mib": peak_mib()}


CHILDREN = {"sft_start": child_sft_start, "dpo": child_dpo, "sft_lora": child_sft_lora}


def run_child(kind: str, opts: dict) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(opts)],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{kind} {opts} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def quality_rows(args, common) -> list[dict]:
    """Part 1: DPO full vs LoRA and SFT LoRA float vs int8 base, from one SFT start."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = str(Path(tmp) / "sft.keras")
        run_child("sft_start", {**common, "sft_epochs": args.sft_epochs, "out": start})
        dpo = {}
        for lora in (False, True):
            dpo[lora] = run_child("dpo", {**common, "start": start, "lora": lora,
                                          "steps": args.steps, "batch": args.batch,
                                          "evaluate": True})
        # At step 0 every implicit reward is 0 (policy == reference): ties, which the strict
        # accuracy counts as wrong, or float noise; chance (0.5) is the honest baseline.
        gain = {k: v["after"] - 0.5 for k, v in dpo.items()}
        for lora, r in dpo.items():
            rows.append({
                "part": f"DPO {args.preset}", "run": f"LoRA r{args.rank}" if lora else "full",
                "metric": "held-out reward accuracy",
                "before": r["before"], "after": r["after"],
                "gain share": gain[lora] / gain[False] if gain[False] else float("nan"),
                "trainable params": r["trainable"],
                "training MiB": r["peak_mib"] - r["rss_before_model_mib"],
                "peak MiB": r["peak_mib"], "step s": r["step_s"]})
        sft = {q: run_child("sft_lora", {**common, "start": start, "quantize": q,
                                         "sft_epochs": 1})
               for q in (None, "int8")}
        sgain = {q: r["before"] - r["after"] for q, r in sft.items()}
        for q, r in sft.items():
            rows.append({
                "part": f"SFT LoRA {args.preset}", "run": f"{q or 'float32'} base",
                "metric": "held-out response loss",
                "before": r["before"], "after": r["after"],
                "gain share": sgain[q] / sgain[None] if sgain[None] else float("nan"),
                "trainable params": "", "training MiB": "", "peak MiB": r["peak_mib"],
                "step s": ""})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("KZOO_TEST_DATA", "../shared/data"))
    parser.add_argument("--preset", default="gpt_baby")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--sft-epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=240, help="DPO steps per run")
    parser.add_argument("--batch", type=int, default=8, help="pairs per DPO step")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lora-lr-factor", type=float, default=10.0)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--memory-steps", type=int, default=4)
    parser.add_argument("--memory-jit", action="store_true",
                        help="XLA for the 124M memory runs too (its compiler's own memory, "
                             "the same for both runs, then dominates the peak)")
    parser.add_argument("--memory-only", action="store_true", help="part 2 only")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](json.loads(args.child[1]))))
        return
    if args.quick:
        args.preset, args.sft_epochs, args.steps, args.memory_steps = "gpt_nano", 1, 6, 2
    started = time.perf_counter()
    common = {"data": args.data, "preset": args.preset, "max_length": args.max_length,
              "rank": args.rank, "lr": args.lr, "lora_lr_factor": args.lora_lr_factor}
    rows = [] if args.memory_only else quality_rows(args, common)
    big = {**common, "preset": "gpt2_124m", "max_length": 128, "start": None,
           "steps": args.memory_steps, "batch": 4, "evaluate": False, "jit": args.memory_jit}
    if args.quick:
        big["preset"] = "gpt_mini"
    for lora, remat in ((False, False), (True, False), (True, True)):
        r = run_child("dpo", {**big, "lora": lora, "remat": remat})
        name = (f"LoRA r{args.rank}" if lora else "full") + (" + remat" if remat else "")
        rows.append({"part": f"DPO {big['preset']} memory", "run": name, "metric": "",
                     "before": "", "after": "", "gain share": "",
                     "trainable params": r["trainable"],
                     "training MiB": r["peak_mib"] - r["rss_before_model_mib"],
                     "peak MiB": r["peak_mib"], "step s": r["step_s"]})
    full_mem, lora_mem, both = (row["training MiB"] for row in rows[-3:])
    report("lora_dpo", rows, {**vars(args), "lora_training_memory_share": lora_mem / full_mem,
                              "lora_remat_training_memory_share": both / full_mem,
                              "wall_seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
