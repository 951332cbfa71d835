"""Pre-train a kzoo model for next-token prediction.

    python recipes/pretrain.py --config recipes/configs/gpt/nano_pydocs_pretrain.yaml
    kzoo pretrain --config gpt/nano_pydocs_pretrain
    python recipes/pretrain.py --config CONFIG --set train.steps=100 --set run_dir=runs/x

Running the same command again after an interruption (even kill -9) resumes from the last
saved step. The run folder holds config.yaml, tokenizer/, model.keras, best.keras,
metrics.csv, loss.png and tensorboard/.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. train.steps=100 (repeatable)")
    parser.add_argument("--result-json", help="also write the final figures to this JSON file")
    args = parser.parse_args(argv)

    from kzoo.training import NaNLossError, PretrainConfig, load_config, pretrain
    from kzoo.training.recipe import error_line

    try:
        config = load_config(args.config, PretrainConfig, overrides=args.set)
        result = pretrain(config)
    except (ValueError, NaNLossError) as error:  # bad input: one line, exit code 2
        print(error_line(error), file=sys.stderr)
        return 2 if isinstance(error, ValueError) else 3
    summary = {k: v for k, v in result.items() if k != "sample"}
    print("result:", json.dumps(summary))
    if args.result_json:
        with open(args.result_json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
