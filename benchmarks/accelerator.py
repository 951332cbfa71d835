"""gpt2_124m in bfloat16 on the current Keras backend: training tokens/s, MFU, generation tokens/s.

Run by benchmarks/accelerator.sh once per backend (KERAS_BACKEND=jax / torch); each figure that
cannot be measured is reported as a line saying why, and the others still run.
MFU = achieved FLOP/s / the device's peak bfloat16 FLOP/s, with nanoGPT's count of
6 N + 12 L H T FLOPs per trained token (N parameters, L layers, H width, T context).

Run: `KERAS_BACKEND=jax python benchmarks/accelerator.py [--batch 8] [--seq 1024] [--steps 10]`
"""

import argparse
import json
import platform
import sys
import time
import traceback

# Dense bfloat16 peak FLOP/s by device name (vendor data sheets, without sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12,
             "V5E": 197e12, "V5P": 459e12, "V4": 275e12, "V6E": 918e12}


def device_name() -> str:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}:{getattr(device, 'device_kind', device)}"
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def peak(name: str):
    upper = name.upper().replace(" ", "")
    return next((v for k, v in PEAK_BF16.items() if k in upper), None)


def timed(fn, steps):
    fn()  # compile / warm up
    start = time.perf_counter()
    for _ in range(steps):
        out = fn()
    _sync(out)
    return (time.perf_counter() - start) / steps


def _sync(value):
    from keras import ops

    if value is not None:
        ops.convert_to_numpy(value if not isinstance(value, dict | list | tuple)
                             else next(iter(value.values()) if isinstance(value, dict)
                                       else value[0]))


def train(args, report):
    import keras
    import numpy as np

    from kzoo.models import CausalLM

    keras.config.set_dtype_policy("mixed_bfloat16")
    model = CausalLM.from_preset("gpt2_124m", dropout=0.0)
    model.compile(optimizer=keras.optimizers.AdamW(3e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ids = np.random.default_rng(0).integers(0, 50257, (args.batch, args.seq + 1)).astype("int32")
    x, y = ids[:, :-1], ids[:, 1:]
    seconds = timed(lambda: model.train_on_batch(x, y, return_dict=True)["loss"], args.steps)
    tokens = args.batch * args.seq / seconds
    params = model.count_params()
    flops = 6 * params + 12 * 12 * 768 * args.seq
    report["train_tokens_per_s"] = tokens
    report["parameters"] = params
    device_peak = peak(report["device"])
    if device_peak:
        report["mfu"] = tokens * flops / device_peak
    else:
        report["mfu"] = None
        print(f"accelerator: no bfloat16 peak known for {report['device']!r}: MFU not computed")
    keras.config.set_dtype_policy("float32")
    return model


def generate(args, report, model):
    import numpy as np

    from kzoo.generation import Generator

    generator = Generator(model, "greedy")
    ids = np.random.default_rng(1).integers(1, 50257, (args.gen_batch, 64)).astype("int32")
    seconds = timed(lambda: generator.generate(ids, max_new_tokens=args.new_tokens), 2)
    report["generate_tokens_per_s"] = args.gen_batch * args.new_tokens / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--gen-batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import keras

    report = {"backend": keras.backend.backend(), "python": platform.python_version(),
              "keras": keras.__version__, "settings": vars(args)}
    report["device"] = device_name()
    if report["device"] == "cpu" or report["device"].startswith("cpu"):
        print("accelerator: no accelerator found by this backend: the figures are the CPU's")
    failed, model = [], None
    try:
        model = train(args, report)
    except Exception as error:  # report and go on: generation may still work
        failed.append("train")
        print(f"accelerator: {report['backend']} training failed: {error!r}")
        traceback.print_exc(limit=3)
    try:
        if model is None:
            from kzoo.models import CausalLM

            model = CausalLM.from_preset("gpt2_124m", dropout=0.0)
        generate(args, report, model)
    except Exception as error:
        failed.append("generate")
        print(f"accelerator: {report['backend']} generation failed: {error!r}")
        traceback.print_exc(limit=3)
    report["failed"] = failed
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
