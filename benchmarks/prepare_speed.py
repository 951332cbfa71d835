"""Preparation speed: `kzoo prepare` against bare `tokenizers` encoding and litdata's `optimize()`.

One corpus of Parquet shards (documents: the paragraphs of the shared Shakespeare text and of
the pydocs corpus, each copy in its own seeded order), one byte-level BPE tokenizer trained by
kzoo, three ways to tokenize all of it, each in a fresh process on both cores:

- `bare`: `tokenizers`' `encode_batch` over the text already in memory (only encoding timed):
  the limit, the rest is reading and writing; `bare_fast` the same with `encode_batch_fast`
  (no character offsets), which kzoo's BPE tokenizer calls;
- `kzoo`: `kzoo.data.prepare` (reads row groups, encodes, writes uint16 shards and the index);
- `litdata`: `litdata.optimize()` with `TokensLoader`, the path litgpt's data preparation uses
  (a function that tokenizes each row group with the same tokenizer, 2 workers).

    pip install --no-deps litdata==0.2.76 lightning-utilities obstore tifffile boto3 botocore \
        jmespath s3transfer                        # litdata without a second torch
    python benchmarks/prepare_speed.py --shakespeare ../shared/data/tinyshakespeare.txt --mb 1024

Writes benchmarks/results/prepare_speed.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import cpu_name, report, run_child  # noqa: E402

BATCH_CHARS = 2 << 20


def make_corpus(folder: Path, shakespeare: Path, megabytes: int) -> list[str]:
    """Parquet shards of about 64 MB holding `megabytes` of text; the same for the same size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kzoo.data import pydocs_documents

    done = folder / f"corpus-{megabytes}mb"
    if (done / "DONE").is_file():
        return sorted(glob.glob(str(done / "*.parquet")))
    shutil.rmtree(done, ignore_errors=True)
    done.mkdir(parents=True)
    paragraphs = [p for p in shakespeare.read_text().split("\n\n") if p.strip()]
    paragraphs += [p for d in pydocs_documents() for p in d.split("\n\n") if p.strip()]
    docs, size, shard, copy, in_shard = [], 0, 0, 0, 0
    target = megabytes << 20
    while size < target:
        order = paragraphs[:]
        random.Random(copy).shuffle(order)
        copy += 1
        for i in range(0, len(order), 8):  # documents of 8 paragraphs
            doc = "\n\n".join(order[i:i + 8])
            docs.append(doc)
            size += len(doc)
            in_shard += len(doc)
            if in_shard >= 64 << 20 or size >= target:
                pq.write_table(pa.table({"text": docs}), done / f"shard-{shard:04d}.parquet",
                               row_group_size=2000)
                docs, shard, in_shard = [], shard + 1, 0
            if size >= target:
                break
    (done / "DONE").write_text(str(size))
    return sorted(glob.glob(str(done / "*.parquet")))


def train_tokenizer(folder: Path, files: list[str], vocab: int) -> Path:
    import pyarrow.parquet as pq

    from kzoo.tokenizers import BPETokenizer

    out = folder / f"bpe-{vocab}"
    if not (out / "tokenizer.json").is_file():
        texts = pq.ParquetFile(files[0]).read_row_group(0).column(0).to_pylist()
        BPETokenizer.train(texts, vocab_size=vocab).save(out)
    return out


def row_groups(files):
    import pyarrow.parquet as pq

    for path in files:
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            yield parquet.read_row_group(group, columns=["text"]).column(0).to_pylist()


def child_bare(files, tokenizer_dir, out, method="encode_batch"):
    from kzoo.tokenizers import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)._tok
    encode = getattr(tok, method)
    batches, batch, size = [], [], 0
    for texts in row_groups(files):
        for text in texts:
            batch.append(text)
            size += len(text)
            if size >= BATCH_CHARS:
                batches.append(batch)
                batch, size = [], 0
    batches.append(batch)
    chars = sum(len(t) for b in batches for t in b)
    start, tokens = time.perf_counter(), 0
    for batch in batches:
        tokens += sum(len(e.ids) + 1 for e in encode(batch))
    return {"seconds": time.perf_counter() - start, "tokens": tokens, "chars": chars}


def child_kzoo(files, tokenizer_dir, out):
    from kzoo.data.prepare import prepare

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    index = prepare(files, out, tokenizer=str(tokenizer_dir), validation_fraction=0.01,
                    progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "chars": None,
            "tokens": sum(s["tokens"] for s in index["splits"].values())}


def _litdata_fn(item):
    import pyarrow.parquet as pq
    import torch

    from kzoo.tokenizers import load_tokenizer

    path, group, tokenizer_dir = item
    tok = load_tokenizer(tokenizer_dir)
    texts = pq.ParquetFile(path).read_row_group(group, columns=["text"]).column(0).to_pylist()
    for ids in tok.encode_batch(texts):
        yield torch.tensor([*ids.tolist(), tok.eot_id], dtype=torch.int32)


def child_litdata(files, tokenizer_dir, out):
    import pyarrow.parquet as pq
    from litdata import StreamingDataset, TokensLoader, optimize

    shutil.rmtree(out, ignore_errors=True)
    items = [(path, group, str(tokenizer_dir)) for path in files
             for group in range(pq.ParquetFile(path).num_row_groups)]
    start = time.perf_counter()
    optimize(fn=_litdata_fn, inputs=items, output_dir=str(out), num_workers=2,
             chunk_bytes="64MB", item_loader=TokensLoader(), mode="overwrite")
    seconds = time.perf_counter() - start
    block = 257
    dataset = StreamingDataset(str(out), item_loader=TokensLoader(block_size=block))
    return {"seconds": seconds, "chars": None, "tokens": len(dataset) * block}


def child_bare_fast(files, tokenizer_dir, out):
    return child_bare(files, tokenizer_dir, out, method="encode_batch_fast")


CHILDREN = {"bare": child_bare, "bare_fast": child_bare_fast, "kzoo": child_kzoo,
            "litdata": child_litdata}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shakespeare", default="../../shared/data/tinyshakespeare.txt")
    parser.add_argument("--mb", type=int, default=1024, help="MB of text in the corpus")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--workdir", default="/tmp/kzoo-prepare-bench")
    parser.add_argument("--ways", default="bare,bare_fast,kzoo,litdata")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        files, tokenizer_dir, out = json.loads(args.args)
        print("RESULT " + json.dumps(CHILDREN[args.child](files, Path(tokenizer_dir),
                                                          Path(out))))
        return
    work = Path(args.workdir)
    files = make_corpus(work, Path(args.shakespeare).resolve(), args.mb)
    tokenizer_dir = train_tokenizer(work, files, args.vocab)
    text_mb = sum(os.path.getsize(f) for f in files) / 2**20
    rows, results = [], {}
    for way in args.ways.split(","):
        payload = json.dumps([files, str(tokenizer_dir), str(work / f"out-{way}")])
        result, err = run_child(__file__, ["--child", way, "--args", payload], "tensorflow")
        if result is None:
            raise SystemExit(f"{way} failed:\n{err[-3000:]}")
        results[way] = result
        shutil.rmtree(work / f"out-{way}", ignore_errors=True)
    chars = results.get("bare", {}).get("chars")
    for way, result in results.items():
        rows.append({"way": way, "seconds": round(result["seconds"], 1),
                     "tokens": result["tokens"],
                     "tokens_per_s": result["tokens"] / result["seconds"],
                     "text_MB_per_s": chars / 2**20 / result["seconds"] if chars else None})
    ratios = {}
    if "kzoo" in results and "bare" in results:
        ratios["kzoo_vs_bare"] = rows[[r["way"] for r in rows].index("kzoo")]["tokens_per_s"] / \
            rows[[r["way"] for r in rows].index("bare")]["tokens_per_s"]
    if "kzoo" in results and "bare_fast" in results:
        ratios["kzoo_vs_bare_fast"] = results["bare_fast"]["seconds"] / results["kzoo"]["seconds"]
    if "kzoo" in results and "litdata" in results:
        ratios["kzoo_vs_litdata"] = results["litdata"]["seconds"] / results["kzoo"]["seconds"]
    print(json.dumps(ratios))
    report("prepare_speed", rows, {"corpus_mb_parquet": round(text_mb), "text_mb": args.mb,
                                   "vocab": args.vocab, "cpu": cpu_name(), **ratios})


if __name__ == "__main__":
    main()
