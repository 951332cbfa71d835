"""Speculative decoding speed at batch 1, greedy: kzoo plain vs prompt lookup vs a draft model,
beside transformers' `generate`, `prompt_lookup_num_tokens` and assisted generation on the
same two models exported with `save_hf`. Every row must give the same tokens (asserted).

The task quotes: the prompt is a passage of random tokens followed by the first part of the
same passage again, so a model that has learned to copy continues by quoting it, which is
where prompt lookup pays (drafts from the prompt) and where a small draft model that also
copies agrees with the big one. `--train-steps` (default 300) first trains both models on
that copying task (next-token loss on passage + passage sequences, both on the same data), so
the drafts mean something; with 0 the weights stay random (a speed smoke test only: random
models rarely agree with their drafts).

- target / draft: presets (default gpt_mini drafted by gpt_baby, both vocab 256) or kzoo run
  folders (`CausalLM.load`able `model.keras` in them).
- kzoo rows: `Generator(model, "greedy")`, then with `draft="prompt_lookup"` and
  `draft=<draft model>`, `num_draft_tokens=--k`; XLA on TensorFlow; compile excluded (one
  warm-up call), best of `--repeats`. The acceptance rate comes from `result.stats`.
- transformers rows: `generate(do_sample=False)` on the `save_hf` exports (PyTorch, float32,
  all cores), then with `prompt_lookup_num_tokens=--k` and `assistant_model=` the draft.

Run: `python benchmarks/speculative.py` (on a quiet machine; writes
benchmarks/results/speculative.json). `--quick` smokes it on nano models in well under a
minute.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import best_of, report


def load(spec: str, vocab_size: int):
    from kzoo.models import CausalLM

    if Path(spec).exists():
        folder = Path(spec)
        return CausalLM.load(folder / "model.keras" if folder.is_dir() else folder)
    # 256 positions for every preset: the prompt plus the new tokens must fit the draft too
    return CausalLM.from_preset(spec, vocab_size=vocab_size, max_sequence_length=256)


def quote_batch(rng, batch, length, passage, vocab):
    """Rows of [passage, passage, ...] (random passages), cut to `length` tokens."""
    rows = []
    for _ in range(batch):
        text = rng.integers(1, vocab, size=passage)
        rows.append(np.tile(text, length // passage + 1)[:length])
    return np.stack(rows).astype("int32")


def train(model, steps, passage, rng, learning_rate=3e-3):
    """Next-token training on the copying task: enough for a model to quote its prompt."""
    import keras

    if steps <= 0:
        return None
    # 1e-3 over 80-token passages left both models at ln(256) after 300 steps (no copying
    # learned); 3e-3 over 32-token passages copies by step 200 (loss = the first passage's)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    length = model.max_sequence_length
    loss = None
    for _ in range(steps):
        ids = quote_batch(rng, 16, length + 1, passage, model.vocab_size)
        loss = model.train_on_batch(ids[:, :-1], ids[:, 1:])
    return float(np.asarray(loss).reshape(-1)[0])


def time_kzoo(model, prompt, new_tokens, repeats, **draft):
    from kzoo.generation import Generator

    generator = Generator(model, "greedy", **draft)
    result = generator.generate([prompt], max_new_tokens=new_tokens)  # compile
    seconds = best_of(lambda: generator.generate([prompt], max_new_tokens=new_tokens), repeats)
    rate = result.stats["acceptance_rate"] if result.stats else None
    return result.token_ids[0], seconds, rate


def time_transformers(folder, prompt, new_tokens, repeats, **kwargs):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    model.generation_config.eos_token_id = None  # run every token, as kzoo without stops
    model.generation_config.pad_token_id = 0
    if "assistant_model" in kwargs:
        assistant = AutoModelForCausalLM.from_pretrained(kwargs["assistant_model"]).eval()
        assistant.generation_config.eos_token_id = None
        kwargs["assistant_model"] = assistant
    ids = torch.tensor([prompt])

    def run():
        with torch.no_grad():
            return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  **kwargs)

    out = run()  # warm-up
    return out[0, len(prompt):].tolist(), best_of(run, repeats), None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="gpt_mini")
    parser.add_argument("--draft", default="gpt_baby")
    parser.add_argument("--vocab-size", type=int, default=256, help="for presets")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=112)
    parser.add_argument("--passage", type=int, default=32, help="tokens of the quoted passage")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--k", type=int, default=4, help="draft tokens per verification")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="nano models, a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.target = args.draft = "gpt_nano"
        args.new_tokens, args.prompt_tokens, args.passage = 16, 24, 16
        args.train_steps, args.repeats = 20, 1

    rng = np.random.default_rng(0)
    target, draft = load(args.target, args.vocab_size), load(args.draft, args.vocab_size)
    losses = {"target": train(target, args.train_steps, args.passage, rng, args.learning_rate),
              "draft": train(draft, args.train_steps, args.passage, rng, args.learning_rate)}
    chance = float(np.log(target.vocab_size))  # the loss of a model that learned nothing
    for name, loss in losses.items():
        if loss is not None and loss > 0.5 * chance:
            print(f"warning: the {name} did not learn to copy (train loss {loss:.2f}, chance "
                  f"{chance:.2f}): drafts will rarely be accepted; train longer")
    prompt = quote_batch(rng, 1, args.prompt_tokens, args.passage, target.vocab_size)[0].tolist()
    k = args.k
    rows, expected = [], None
    with tempfile.TemporaryDirectory() as tmp:
        target_hf, draft_hf = Path(tmp) / "target", Path(tmp) / "draft"
        target.save_hf(target_hf)
        draft.save_hf(draft_hf)
        cases = [
            ("kzoo", "greedy", lambda: time_kzoo(target, prompt, args.new_tokens, args.repeats)),
            ("kzoo", f"prompt lookup (k={k})", lambda: time_kzoo(
                target, prompt, args.new_tokens, args.repeats, draft="prompt_lookup",
                num_draft_tokens=k)),
            ("kzoo", f"draft model {args.draft} (k={k})", lambda: time_kzoo(
                target, prompt, args.new_tokens, args.repeats, draft=draft, num_draft_tokens=k)),
            ("transformers", "greedy", lambda: time_transformers(
                target_hf, prompt, args.new_tokens, args.repeats)),
            ("transformers", f"prompt lookup (k={k})", lambda: time_transformers(
                target_hf, prompt, args.new_tokens, args.repeats, prompt_lookup_num_tokens=k)),
            ("transformers", f"assisted by {args.draft}", lambda: time_transformers(
                target_hf, prompt, args.new_tokens, args.repeats, assistant_model=draft_hf)),
        ]
        for library, method, timed in cases:
            started = time.perf_counter()
            tokens, seconds, rate = timed()
            if expected is None:
                expected = tokens
            assert tokens == expected, f"{library} {method}: tokens differ from kzoo greedy's"
            rows.append({"library": library, "method": method,
                         "tokens/s": round(args.new_tokens / seconds, 1),
                         "acceptance": None if rate is None else round(rate, 3),
                         "same tokens": True,
                         "wall incl. warm-up (s)": round(time.perf_counter() - started, 1)})
    base = {r["method"]: r["tokens/s"] for r in rows if r["library"] == "transformers"}
    for row, hf_method in zip(rows, list(base) * 2):
        row["vs transformers' same mode"] = f"{row['tokens/s'] / base[hf_method]:.2f}x"
    report("speculative", rows, {**vars(args), "final_train_losses": losses})


if __name__ == "__main__":
    main()
