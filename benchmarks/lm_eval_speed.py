"""lm-eval speed: kzoo's lm-eval model (`kzoo.eval.KzooLM`) vs lm-eval's own `hf` model
(transformers + torch) on the same weights and the same requests.

The model is the GPT-2 124M shape with random weights (`CausalLM.from_preset("gpt2_124m")`),
written once with `save_hf` together with a byte-level BPE tokenizer trained on pydocs, so both
read one folder. The requests are those of kzoo's shipped arithmetic tasks, three-shot: `--docs`
multiple-choice docs (four `loglikelihood` requests each) and `--gen` greedy `generate_until`
requests (until "\\n", 6 new tokens). Each (model, kind) runs in a fresh process with both
cores (torch: 2 threads), batch size `--batch-size`; a first pass warms up (kzoo compiles its
programs there; torch allocates) and the second pass is timed. The last column says whether
both gave the same answers (log-likelihoods within 1e-3, identical generations).

Run: `python benchmarks/lm_eval_speed.py [--docs 24] [--gen 16] [--batch-size 8]`
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import report, run_child

FOLDER = Path("/tmp/kzoo_lm_eval_speed_gpt2_124m")


def _make_folder(folder: Path) -> None:
    if (folder / "model.safetensors").is_file():
        return
    import numpy as np

    from kzoo.data.sources import pydocs_documents
    from kzoo.models import CausalLM
    from kzoo.tokenizers import BPETokenizer

    tokenizer = BPETokenizer.train(pydocs_documents(), vocab_size=4096)
    model = CausalLM.from_preset("gpt2_124m")
    model(np.zeros((1, 4), "int32"))
    model.save_hf(folder, tokenizer=tokenizer)


def _requests(kind: str, count: int):
    from lm_eval.api.instance import Instance

    from kzoo.eval.suite import DATA_DIR

    def rows(name):
        return [json.loads(line) for line in (DATA_DIR / name).read_text().splitlines()]

    shots = "\n\n".join(f"{p['question']} {p['answer']}" for p in rows("arith_fewshot.jsonl")[:3])
    docs = rows("arith_test.jsonl")[:count]
    if kind == "loglikelihood":
        return [Instance("loglikelihood", d, (f"{shots}\n\n{d['question']}", f" {c}"), i)
                for d in docs for i, c in enumerate(d["choices"])]
    kwargs = {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}
    return [Instance("generate_until", d, (f"{shots}\n\n{d['question']}", dict(kwargs)), 0)
            for d in docs]


def child(which: str, kind: str, count: int, batch_size: int) -> None:
    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    if which == "kzoo":
        from kzoo.eval import KzooLM

        lm = KzooLM(pretrained=str(FOLDER), batch_size=batch_size)
    else:
        import torch
        from lm_eval.models.huggingface import HFLM

        torch.set_num_threads(2)
        lm = HFLM(pretrained=str(FOLDER), batch_size=batch_size, device="cpu", dtype="float32")
    requests = _requests(kind, count)
    method = getattr(lm, kind)
    start = time.perf_counter()
    method(requests, disable_tqdm=True)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    answers = method(requests, disable_tqdm=True)
    seconds = time.perf_counter() - start
    answers = [list(a) if isinstance(a, tuple) else a for a in answers]
    print("RESULT " + json.dumps({"warm_s": warm, "seconds": seconds, "requests": len(requests),
                                  "answers": answers}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=24)
    parser.add_argument("--gen", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        which, kind = args.child
        child(which, kind, args.docs if kind == "loglikelihood" else args.gen, args.batch_size)
        return
    _make_folder(FOLDER)
    rows = []
    for kind in ("loglikelihood", "generate_until"):
        results = {}
        for which in ("hf", "kzoo"):
            result, err = run_child(__file__, ["--child", which, kind, "--docs", args.docs,
                                               "--gen", args.gen, "--batch-size",
                                               args.batch_size], "tensorflow")
            if result is None:
                sys.exit(f"{which} {kind} failed:\n{err[-3000:]}")
            results[which] = result
        hf, kz = results["hf"], results["kzoo"]
        if kind == "loglikelihood":
            same = all(abs(a[0] - b[0]) < 1e-3 and a[1] == b[1]
                       for a, b in zip(kz["answers"], hf["answers"]))
        else:
            same = kz["answers"] == hf["answers"]
        rows.append({"requests": f"{kind} x{hf['requests']}",
                     "hf s (warm-up)": hf["warm_s"], "hf s": hf["seconds"],
                     "kzoo s (warm-up, compiles)": kz["warm_s"], "kzoo s": kz["seconds"],
                     "speed-up": hf["seconds"] / kz["seconds"], "same answers": same})
    report("lm_eval_speed", rows, {"model": "gpt2_124m (random weights)", **vars(args),
                                   "backend": "tensorflow", "torch_threads": 2})


if __name__ == "__main__":
    main()
