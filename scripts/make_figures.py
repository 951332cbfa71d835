"""Make the documentation figures from models that kzoo's own recipes train (`make figures`).

    python scripts/make_figures.py                      # train if needed, then draw everything
    python scripts/make_figures.py --retrain            # start the training runs from scratch
    python scripts/make_figures.py --skip-dpo           # pre-training figures only

1. Pre-trains `recipes/configs/gpt/nano_pydocs_pretrain.yaml` (the README demo: 2-layer GPT on
   the Python docs, no download; about 3 minutes on 2 CPU cores) into `runs/figures/pretrain`,
   through `kzoo.training.pretrain`. A finished run is reused; an interrupted one resumes.
2. Draws from that model: next-word bars, the same prompt at several temperatures (bars and
   sampled text), attention heads over a sentence, the logit lens, parameter counts and the
   training/validation curves of its `metrics.csv`.
3. DPO: tunes that model with the preference recipe (`recipes/dpo.py`, the
   `gpt/baby_instruction_dpo.yaml` config with the pre-trained model, its tokenizer and 4 epochs
   set on the command line; 1-2 minutes) on the team's preference pairs (`--preference-data`,
   default `$KZOO_TEST_DATA/instruction-preference.json`, else `../shared/data/...`) into
   `runs/figures/dpo`, and draws the reward margin and accuracy from its `metrics.json`.

Everything goes to `docs/assets/figures/` (`--out`): PNGs, the text snippets the pages include
(`provenance.txt`, `temperature_samples.txt`, `dpo_provenance.txt`) and `figures.json`, a record
of what was trained, when, and the measured losses.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_CONFIG = "recipes/configs/gpt/nano_pydocs_pretrain.yaml"
NEXT_WORD_PROMPT = "If the object is a"
TEMPERATURES = (0.5, 1.0, 2.0)
SAMPLE_PROMPT = 'The "for" statement'
SAMPLE_TEMPERATURES = (0.5, 1.0, 1.5)
ATTENTION_SENTENCE = 'The "for" statement is used to iterate over the elements of a sequence'
DPO_SCRIPT = "recipes/dpo.py"
DPO_CONFIG = "recipes/configs/gpt/baby_instruction_dpo.yaml"
DPO_EPOCHS = 4
DPO_BATCH = 8


def _label(tokenizer, token_id: int) -> str:
    """A readable label for one token: escapes make newlines and edge spaces visible."""
    text = tokenizer.decode([int(token_id)])
    return repr(text)[1:-1] or f"#{token_id}"


def _safe_text(text: str) -> str:
    """Sampled text goes into a Markdown fence: keep it from closing the fence or including
    files (`--8<--` is the snippet syntax)."""
    return text.replace("```", "'''").replace("~~~", "---").replace("--8<--", "--8 <--")


def pretrain_model(run_dir: Path, retrain: bool) -> dict:
    """Run (or reuse, or resume) the pre-training recipe; return its facts."""
    from kzoo.training import PretrainConfig, load_config, pretrain
    from kzoo.viz import read_metrics

    if retrain and run_dir.exists():
        shutil.rmtree(run_dir)
    facts_file = run_dir / "figures_run.json"
    if (run_dir / "model.keras").is_file() and facts_file.is_file():
        print(f"Reusing the trained model in {run_dir} (pass --retrain to train again)")
        return json.loads(facts_file.read_text())
    config = load_config(ROOT / PRETRAIN_CONFIG, PretrainConfig, overrides=[
        f"run_dir={run_dir}", "train.verbose=2", "train.tensorboard=false",
    ])
    start = time.perf_counter()
    result = pretrain(config)
    # A run resumed after its last step trains no further and logs nothing: read the CSV.
    last = {k: v[-1] for k, v in read_metrics(run_dir / "metrics.csv").items()}
    facts = {
        "config": PRETRAIN_CONFIG,
        "preset": config.model.preset,
        "steps": result["steps"],
        "val_loss": last["val_loss"],
        "val_perplexity": last["val_perplexity"],
        "tokens_per_s": result["tokens_per_s"],
        "wall_s": round(time.perf_counter() - start, 1),
        "date": datetime.date.today().isoformat(),
    }
    facts_file.write_text(json.dumps(facts, indent=1))
    return facts


def pretrain_figures(run_dir: Path, out: Path, facts: dict) -> list[Path]:
    """Every figure drawn from the pre-trained model and its metrics."""
    import keras
    import numpy as np

    import kzoo  # noqa: F401  (registers the kzoo layers for loading)
    from kzoo import samplers
    from kzoo.generation import (
        generate,
        next_word_distribution,
        plot_distributions,
        temperature_sweep,
    )
    from kzoo.tokenizers import load_tokenizer
    from kzoo.viz import (
        logit_lens,
        model_attention,
        parameter_groups,
        plot_attention,
        plot_curves,
        plot_logit_lens,
        plot_parameter_groups,
    )

    # compile=False: the figures need the weights only, not the optimizer and its schedule.
    model = keras.models.load_model(run_dir / "model.keras", compile=False, safe_mode=True)
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    written = []

    dist = next_word_distribution(model, NEXT_WORD_PROMPT, k=10, tokenizer=tokenizer)
    written.append(dist.to_png(out / "next_word.png"))

    sweep = temperature_sweep(model, NEXT_WORD_PROMPT, TEMPERATURES, k=8, tokenizer=tokenizer)
    written.append(plot_distributions(sweep, out / "temperatures.png"))

    lines = [f"Prompt: `{SAMPLE_PROMPT}`", "", "```text"]
    for t in SAMPLE_TEMPERATURES:
        sampler = samplers.get("top_k", k=40, temperature=t)
        result = generate(model, SAMPLE_PROMPT, max_new_tokens=40, sampler=sampler,
                          tokenizer=tokenizer, seed=0)
        text = " ".join(_safe_text(result.texts[0]).split())  # one line per temperature
        lines.append(f"T = {t:<4g} {SAMPLE_PROMPT}{text}")
    lines.append("```")
    samples = out / "temperature_samples.txt"
    samples.write_text("\n".join(lines) + "\n", encoding="utf-8")
    written.append(samples)

    ids = [int(i) for i in tokenizer.encode(ATTENTION_SENTENCE)]
    labels = [_label(tokenizer, i) for i in ids]
    patterns = model_attention(model, np.array([ids]))  # one (1, heads, seq, seq) per block
    heads = np.concatenate([p[0] for p in patterns])  # (blocks * heads, seq, seq)
    titles = [f"block {b}, head {h}" for b in range(len(patterns))
              for h in range(patterns[b].shape[1])]
    written.append(plot_attention(heads, labels, out / "attention.png", panel_titles=titles,
                                  columns=2))

    lens = logit_lens(model, np.array([ids]))[:, 0]  # (blocks + 1, seq, vocab)
    written.append(plot_logit_lens(lens, ids, out / "logit_lens.png",
                                   labels=lambda i: _label(tokenizer, i)))

    written.append(plot_parameter_groups(parameter_groups(model), out / "parameters.png",
                                         title=f"{facts['preset']} trained on the Python docs"))

    written.append(plot_curves(
        run_dir / "metrics.csv", [["loss", "val_loss"], ["lr"]], out / "training_curves.png",
        titles=["next-token cross-entropy", "learning rate (warm-up, cosine decay)"],
        ylabels=["loss (nats per token)", "learning rate"],
        labels={"loss": "training", "val_loss": "validation"},
    ))

    provenance = out / "provenance.txt"
    provenance.write_text(
        f"*Figure drawn by `make figures` from `{facts['preset']}` pre-trained with "
        f"`{facts['config']}` ({facts['steps']} steps, validation loss "
        f"{facts['val_loss']:.2f}, perplexity {facts['val_perplexity']:.0f}; "
        f"{facts['date']}).*\n", encoding="utf-8")
    written.append(provenance)
    return written


def dpo_figures(run_root: Path, pretrained: Path, out: Path, preference_data: Path,
                retrain: bool, pretrain_facts: dict) -> tuple[list[Path], dict]:
    """Fine-tune the pre-trained model with the DPO recipe, then draw its metrics."""
    from kzoo.viz import plot_curves

    for needed in (ROOT / DPO_SCRIPT, ROOT / DPO_CONFIG):
        if not needed.is_file():
            raise ValueError(f"{needed} does not exist: the DPO figures need the preference "
                             "recipe (or pass --skip-dpo)")
    if not preference_data.is_file():
        raise ValueError(f"preference data {preference_data} does not exist; pass "
                         "--preference-data or set KZOO_TEST_DATA (or pass --skip-dpo)")
    run_dir = run_root / "dpo"
    if retrain and run_dir.exists():
        shutil.rmtree(run_dir)
    metrics_file, source = run_dir / "metrics.json", run_dir / "figures_source.json"
    reusable = (metrics_file.is_file() and source.is_file()
                and json.loads(source.read_text()) == pretrain_facts)
    if reusable:
        print(f"Reusing the DPO run in {run_dir} (pass --retrain to train again)")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # absent, or tuned from another model
        # The pre-trained model has 128 positions: rows of 128 tokens of its BPE tokenizer.
        command = [sys.executable, str(ROOT / DPO_SCRIPT), "--config", str(ROOT / DPO_CONFIG),
                   "--set", f"run_dir={run_dir}",
                   "--set", f"model.init_from={pretrained / 'model.keras'}",
                   "--set", f"model.tokenizer={pretrained / 'tokenizer'}",
                   "--set", f"data.path={preference_data}",
                   "--set", "data.max_length=128",
                   "--set", f"train.epochs={DPO_EPOCHS}",
                   "--set", f"train.batch_size={DPO_BATCH}"]
        print("Running:", " ".join(command), flush=True)
        start = time.perf_counter()
        if subprocess.run(command, cwd=ROOT).returncode != 0:
            raise ValueError(f"the DPO recipe failed (command above); {run_dir} is incomplete")
        (run_dir / "figures_wall_s.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
        source.write_text(json.dumps(pretrain_facts))
    result = json.loads(metrics_file.read_text())
    history, before = result["history"], result["held_out_before"]
    epochs = len(history["loss"])
    steps_per_epoch = math.ceil(result["split"]["train_pairs"] / DPO_BATCH)
    nan = float("nan")
    # Step 0 is the held-out evaluation before training; training values are epoch means.
    # At step 0 the policy is the reference, so every reward is 0 up to rounding: the margin
    # there is meaningful (0), the accuracy (chosen > rejected on rounding noise) is not.
    columns = {"step": [e * steps_per_epoch for e in range(epochs + 1)]}
    for name, start in (("rewards/margin", before["rewards/margin"]),
                        ("rewards/accuracy", nan)):
        columns[name] = [nan] + history[name]
        columns[f"val_{name}"] = [start] + history[f"val_{name}"]
    png = plot_curves(
        columns, [["rewards/margin", "val_rewards/margin"],
                  ["rewards/accuracy", "val_rewards/accuracy"]],
        out / "dpo_rewards.png", x="step",
        titles=["reward margin (chosen − rejected)", "reward accuracy"],
        ylabels=["β · log-ratio difference", "share of pairs ranked right"],
        labels={"rewards/margin": "training (epoch mean)", "val_rewards/margin": "held out",
                "rewards/accuracy": "training (epoch mean)",
                "val_rewards/accuracy": "held out"},
        reference_lines={0: 0.0, 1: 0.5},
    )
    after = result["held_out_after"]
    wall = run_dir / "figures_wall_s.txt"
    facts = {"config": DPO_CONFIG, "epochs": epochs, "steps": epochs * steps_per_epoch,
             "train_pairs": result["split"]["train_pairs"],
             "held_out_pairs": result["split"]["validation_pairs"],
             "held_out_loss_before": before["loss"],
             "held_out_loss_after": after["loss"],
             "held_out_accuracy_after": after["rewards/accuracy"],
             "held_out_margin_after": after["rewards/margin"],
             "wall_s": float(wall.read_text()) if wall.is_file() else None,
             "date": datetime.date.today().isoformat()}
    provenance = out / "dpo_provenance.txt"
    provenance.write_text(
        f"*Figure drawn by `make figures`: the `gpt_nano` pre-trained on the Python docs, tuned by "
        f"`recipes/dpo.py` with `{DPO_CONFIG}` ({epochs} epochs of "
        f"{facts['train_pairs']} pairs, batch {DPO_BATCH}; rows of 128 tokens of its BPE "
        f"tokenizer). On {facts['held_out_pairs']} held-out pairs: DPO loss "
        f"{facts['held_out_loss_before']:.3f} → {facts['held_out_loss_after']:.3f}, reward "
        f"accuracy {facts['held_out_accuracy_after']:.2f}, reward margin "
        f"{facts['held_out_margin_after']:.2f} ({facts['date']}).*\n", encoding="utf-8")
    return [png, provenance], facts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "assets" / "figures"),
                        help="folder for the PNGs and snippets (default docs/assets/figures)")
    parser.add_argument("--run-root", default=str(ROOT / "runs" / "figures"),
                        help="folder for the training runs (default runs/figures)")
    parser.add_argument("--retrain", action="store_true", help="train again from scratch")
    parser.add_argument("--skip-dpo", action="store_true", help="pre-training figures only")
    default_data = Path(os.environ.get("KZOO_TEST_DATA", ROOT.parent / "shared" / "data"))
    parser.add_argument("--preference-data",
                        default=str(default_data / "instruction-preference.json"),
                        help="preference pairs for the DPO figures")
    args = parser.parse_args(argv)

    out, run_root = Path(args.out), Path(args.run_root)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        facts = {"pretrain": pretrain_model(run_root / "pretrain", args.retrain)}
        written = pretrain_figures(run_root / "pretrain", out, facts["pretrain"])
        if not args.skip_dpo:
            dpo_written, facts["dpo"] = dpo_figures(run_root, run_root / "pretrain", out,
                                                    Path(args.preference_data), args.retrain,
                                                    facts["pretrain"])
            written += dpo_written
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    record = out / "figures.json"
    old = json.loads(record.read_text()) if record.is_file() else {}
    if args.skip_dpo and "dpo" in old:
        facts["dpo"] = old["dpo"]  # keep the record of the DPO figures left in place
    record.write_text(json.dumps(facts, indent=1) + "\n")
    total = sum(p.stat().st_size for p in out.glob("*.png"))
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
    print(f"{len(list(out.glob('*.png')))} PNGs, {total / 1024:.0f} KB in total; "
          f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
