"""gpt2_124m training steps under `fsdp` on every visible device (JAX): step time, tokens/s,
and the weights + AdamW state each device holds against the one-device whole.

Run by benchmarks/accelerator.sh after the one-device figures (issue 24 item 7), so the first
machine with several accelerators measures sharded training. With one device there is nothing
to shard: one line says so and it exits 0. The mesh is {batch: 1, model: N} (every weight split
N ways, the whole batch on every device), kzoo's own fsdp layouts through
`kzoo.training.distribute`; the model is float32 weights computing in bfloat16 (`--precision`).

Run: `KERAS_BACKEND=jax python benchmarks/fsdp_step.py [--batch 8] [--seq 1024] [--steps 10]`
(on a CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=4` and `--seq 64` try it out;
benchmarks/fsdp_devices.py runs it on 1, 2, 4 and 8 virtual CPU devices side by side).
"""

import argparse
import json
import sys
import time

VOCAB = 50257


def held_bytes(variables) -> int:
    """Bytes of `variables` on the first device: the arrays' shards that live there."""
    first = None
    total = 0
    for v in variables:
        for shard in v.value.addressable_shards:
            first = first or shard.device
            if shard.device == first:
                total += shard.data.nbytes
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default=None)
    parser.add_argument("--precision", default="mixed_bfloat16",
                        choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--one-device", action="store_true",
                        help="measure one device too (a 1x1 mesh), as the baseline of a sweep")
    args = parser.parse_args()

    import keras
    import numpy as np

    if keras.backend.backend() != "jax":
        print("accelerator: fsdp: needs KERAS_BACKEND=jax (keras.distribution.ModelParallel): "
              "skipped")
        return 0
    devices = keras.distribution.list_devices()
    if len(devices) < 2 and not args.one_device:
        print(f"accelerator: fsdp: one device ({devices[0]}), nothing to shard: skipped")
        return 0

    from kzoo.models import CausalLM
    from kzoo.training.distribute import get_strategy, lay_out, run_scope
    from kzoo.training.plan import plan

    mesh = {"batch": 1, "model": len(devices)}
    strategy = get_strategy("fsdp", mesh=mesh)
    lay_out(strategy, "gpt2_124m", vocab_size=VOCAB)
    keras.config.set_dtype_policy(args.precision)
    with run_scope(strategy):
        model = CausalLM.from_preset("gpt2_124m", dropout=0.0)
        model.compile(optimizer=keras.optimizers.AdamW(3e-4),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.optimizer.build(model.trainable_variables)
        ids = np.random.default_rng(0).integers(0, VOCAB, (args.batch, args.seq + 1))
        x, y = ids[:, :-1].astype("int32"), ids[:, 1:].astype("int32")
        model.train_on_batch(x, y)  # compile
        began = time.perf_counter()
        for _ in range(args.steps):
            loss = model.train_on_batch(x, y, return_dict=True)["loss"]
        float(loss)  # wait for the last step
        seconds = (time.perf_counter() - began) / args.steps
        held = held_bytes(model.trainable_variables) + held_bytes(model.optimizer.variables)
    planned = plan("gpt2_124m", mesh=mesh, layout="fsdp", batch_size=args.batch,
                   sequence_length=args.seq)
    whole = plan("gpt2_124m", batch_size=args.batch, sequence_length=args.seq)
    report = {"devices": len(devices), "device": str(devices[0]), "mesh": mesh,
              "settings": vars(args), "step_s": seconds,
              "train_tokens_per_s": args.batch * args.seq / seconds,
              "held_bytes_first_device": held,
              "planned_bytes": planned.per_device["weights"] + planned.per_device["optimizer"],
              "one_device_bytes": whole.per_device["weights"] + whole.per_device["optimizer"]}
    report["held_fraction"] = held / report["one_device_bytes"]
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
