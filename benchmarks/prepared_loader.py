"""Pre-training from a prepared folder: peak memory of a 2G-token folder against a 20 MB one, and
the loader's speed against what a gpt_mini training step consumes, on every backend.

Two folders are prepared from the same generated JSONL text (the shared Shakespeare text's
paragraphs in seeded orders, 16 to a document) with the byte tokenizer: `small` (about 10M tokens,
20 MB of shards) and `large` (at least 2,000M tokens, 4 GB). Then, each in a fresh process:

- `train`: `kzoo pretrain` of gpt_mini (block 256, batch 12, 20 steps, validation every 10) on
  each folder, on TensorFlow; the peak RSS of the process (`ru_maxrss`) and the training
  tokens/s;
- `loader`: the training stream alone over the large folder (`train_dataset` on its
  `TokenStream`, 300 batches after 20 warm-up ones) on TensorFlow, JAX and PyTorch: tokens/s.

    python benchmarks/prepared_loader.py --shakespeare ../shared/data/tinyshakespeare.txt

Writes benchmarks/results/prepared_loader.json.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import cpu_name, report, run_child  # noqa: E402

BLOCK, BATCH = 256, 12


def make_folder(work: Path, shakespeare: Path, name: str, tokens: int) -> Path:
    from kzoo.data.prepare import prepare

    out = work / f"prepared-{name}"
    if (out / "index.json").is_file() and json.loads((out / "index.json").read_text())[
            "complete"]:
        return out
    paragraphs = [p for p in shakespeare.read_text().split("\n\n") if p.strip()]
    source, size, copy = work / f"{name}.jsonl", 0, 0
    with open(source, "w") as f:
        while size < tokens:
            order = paragraphs[:]
            random.Random(copy).shuffle(order)
            copy += 1
            for i in range(0, len(order), 16):
                doc = "\n\n".join(order[i:i + 16])
                f.write(json.dumps({"text": doc}) + "\n")
                size += len(doc.encode()) + 1
                if size >= tokens:
                    break
    prepare([str(source)], out, tokenizer="byte", shard_tokens=1 << 27,
            validation_fraction=0.001, progress=False)
    source.unlink()
    return out


def child_train(folder: str, run_dir: str) -> dict:
    from kzoo.training import PretrainConfig, load_config, pretrain

    demo = Path(__file__).parents[1] / "recipes/configs/gpt/nano_pydocs_pretrain.yaml"
    config = load_config(demo, PretrainConfig,
                         [f"data.prepared={folder}", f"run_dir={run_dir}", "model.preset=gpt_mini",
                          f"model.args={{max_sequence_length: {BLOCK}}}",
                          f"train.block_size={BLOCK}", f"train.batch_size={BATCH}",
                          "train.steps=20", "train.eval_interval=10", "train.val_batches=4",
                          "train.verbose=0", "train.tensorboard=false", "sample.max_new_tokens=0",
                          "sample.every_interval=false"])
    result = pretrain(config)
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "tokens_per_s": result["tokens_per_s"], "val_loss": result["val_loss"]}


def child_loader(folder: str, _unused: str) -> dict:
    from kzoo.data.pipeline import train_dataset
    from kzoo.data.shards import PreparedCorpus

    stream = PreparedCorpus(folder, verify=False).split("train")
    batches = iter(train_dataset(stream, BLOCK, BATCH, seed=0))
    for _ in range(20):
        next(batches)
    start = time.perf_counter()
    for _ in range(300):
        next(batches)
    seconds = time.perf_counter() - start
    return {"tokens_per_s": 300 * BATCH * BLOCK / seconds, "tokens": len(stream)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shakespeare", default="../../shared/data/tinyshakespeare.txt")
    parser.add_argument("--workdir", default="/tmp/kzoo-loader-bench")
    parser.add_argument("--large-tokens", type=int, default=2_050_000_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fn = {"train": child_train, "loader": child_loader}[args.child]
        print("RESULT " + json.dumps(fn(*json.loads(args.args))))
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    shakespeare = Path(args.shakespeare).resolve()
    folders = {"small": make_folder(work, shakespeare, "small", 10_000_000),
               "large": make_folder(work, shakespeare, "large", args.large_tokens)}
    rows, found = [], {}
    for name, folder in folders.items():
        payload = json.dumps([str(folder), str(work / f"run-{name}")])
        import shutil

        shutil.rmtree(work / f"run-{name}", ignore_errors=True)
        result, err = run_child(__file__, ["--child", "train", "--args", payload], "tensorflow")
        if result is None:
            raise SystemExit(f"train on {name} failed:\n{err[-3000:]}")
        found[name] = result
        index = json.loads((folder / "index.json").read_text())
        rows.append({"what": f"pretrain gpt_mini, {name} folder", "backend": "tensorflow",
                     "folder_tokens": index["splits"]["train"]["tokens"],
                     "peak_rss_mb": result["peak_rss_mb"], "tokens_per_s": result["tokens_per_s"]})
    for backend in ("tensorflow", "jax", "torch"):
        payload = json.dumps([str(folders["large"]), ""])
        result, err = run_child(__file__, ["--child", "loader", "--args", payload], backend)
        if result is None:
            raise SystemExit(f"loader on {backend} failed:\n{err[-3000:]}")
        rows.append({"what": "loader alone, large folder", "backend": backend,
                     "folder_tokens": result["tokens"], "peak_rss_mb": None,
                     "tokens_per_s": result["tokens_per_s"]})
    step = found["large"]["tokens_per_s"]
    settings = {"cpu": cpu_name(), "block": BLOCK, "batch": BATCH,
                "rss_difference_mb": found["large"]["peak_rss_mb"] - found["small"]["peak_rss_mb"],
                "loader_vs_training_step": {r["backend"]: r["tokens_per_s"] / step
                                            for r in rows if r["what"].startswith("loader")}}
    print(json.dumps(settings))
    report("prepared_loader", rows, settings)


if __name__ == "__main__":
    main()
