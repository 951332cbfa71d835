"""`kzoo plan MODEL`: bytes per device of training MODEL on a mesh, before making any weight.

    kzoo plan gpt2_124m --mesh 1x8 --layout fsdp --batch-size 8 --seq-len 1024
    kzoo plan path/to/hf_folder --mesh 2x4 --layout tensor_parallel --device-memory 16
    kzoo plan llama_124m --precision mixed_bfloat16 --remat --tokens 2e9 --peak-tflops 100

MODEL is a preset name or a Hugging Face folder (its config.json alone is read). Prints the
weights, AdamW state, gradients and estimated activations one device holds, whether that fits
--device-memory, and the run's training compute (6 x parameters x tokens). Exit codes: 0 done,
2 bad input (one `error: ...` line). See `kzoo.training.plan`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from kzoo.training.plan import LAYOUTS, PRECISIONS, plan


def _parser():
    parser = argparse.ArgumentParser(prog="kzoo plan", description=__doc__.splitlines()[0])
    parser.add_argument("model", metavar="MODEL", help="a preset name or a Hugging Face folder")
    parser.add_argument("--mesh", default="1x1", help="BATCHxMODEL devices, e.g. 2x4 (1x1)")
    parser.add_argument("--layout", default="data_parallel", choices=LAYOUTS,
                        help="how weights are split (data_parallel)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=8,
                        help="global rows per step (8)")
    parser.add_argument("--seq-len", dest="seq_len", type=int,
                        help="tokens per row (default: the model's context)")
    parser.add_argument("--precision", default="float32", choices=tuple(PRECISIONS),
                        help="float32 (default), mixed_bfloat16 or bfloat16")
    parser.add_argument("--remat", action="store_true", help="activation checkpointing")
    parser.add_argument("--device-memory", dest="device_memory", type=float, metavar="GIB",
                        help="a device's memory in GiB, for the verdict")
    parser.add_argument("--tokens", type=float, help="the run's training tokens (compute)")
    parser.add_argument("--peak-tflops", dest="peak_tflops", type=float,
                        help="a device's peak TFLOP/s (time at peak)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def parse_mesh(text: str) -> dict:
    """`2x4` -> {"batch": 2, "model": 4}; a ValueError (one line) for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or 0 in (int(match.group(1)), int(match.group(2))):
        raise ValueError(f"--mesh must be BATCHxMODEL with positive sizes, e.g. 2x4; got {text!r}")
    return {"batch": int(match.group(1)), "model": int(match.group(2))}


def main(argv: list[str] | None = None) -> int:
    """Run `kzoo plan ARGS...`; returns the exit code (0 done, 2 bad input)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as error:
        return 0 if error.code in (0, None) else 2
    for name in ("batch_size", "seq_len"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return _error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("device_memory", "tokens", "peak_tflops"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            return _error(f"--{name.replace('_', '-')} must be > 0, got {value}")
    try:
        report = plan(args.model, mesh=parse_mesh(args.mesh), layout=args.layout,
                      batch_size=args.batch_size, sequence_length=args.seq_len,
                      precision=args.precision, remat=args.remat,
                      device_memory_gib=args.device_memory,
                      tokens=None if args.tokens is None else int(args.tokens),
                      peak_tflops=args.peak_tflops)
    except ValueError as error:
        return _error(str(error))
    if args.json:
        print(json.dumps({"parameters": report.parameters, "devices": report.devices,
                          "per_device_bytes": report.per_device, "flops": report.flops,
                          "fits": report.fits}, indent=1))
    else:
        print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
