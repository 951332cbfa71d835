"""What the GRPO and RLOO recipes share: their config sections and their run.

Both sample completions of the training prompts with the compiled generator, score them with
the `rewards:` list (built-in names, `path/to/file.py:function_name`, reward-model run folders;
`kzoo.alignment.rewards`), and tune the policy on the advantages (`kzoo.alignment.rl`).
Held-out prompts are sampled every `train.eval_interval` generation batches to measure the
mean reward on prompts the policy never trained on.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from kzoo._quiet import set_random_seed
from kzoo.training.config import checked
from kzoo.training.evaluation import EvalConfig, RecipeEval, compare
from kzoo.training.lora import LoRAConfig
from kzoo.training.recipe import DivergedError, FineTuneModel, MemoryOptions


@dataclasses.dataclass
class PromptData:
    """The `data:` section: a prompt file (`kzoo.data.prompts`) and how prompts are shown."""

    path: str = "../shared/data/instruction-data.json"  # .json/.jsonl/.parquet prompts
    # "raw", "chat" (a user turn in the tokenizer's chat template), "alpaca", "plain" or a
    # format string; chat-message prompts always use the chat template
    template: str = "alpaca"
    held_out_fraction: float = checked(0.1, "fraction")
    split_seed: int = 0


@dataclasses.dataclass
class Generation:
    """The `generation:` section: how completions are sampled for training."""

    num_generations: int = checked(8, "positive")  # G, completions per prompt (>= 2)
    max_new_tokens: int = checked(64, "positive")
    max_prompt_length: int = checked(192, "positive")
    temperature: float = checked(1.0, "positive")
    top_k: int | None = checked(None, "positive")
    top_p: float | None = checked(None, "probability")
    jit_compile: bool = True


@dataclasses.dataclass
class OnlineTrain(MemoryOptions):
    """The `train:` section: generation batches, optimizer steps and held-out measurement."""

    steps: int = checked(100, "positive")  # generation batches
    batch_size: int = checked(64, "positive")  # completions per generation batch
    steps_per_generation: int = checked(1, "positive")
    learning_rate: float = checked(1e-6, "positive")
    eval_interval: int = checked(10, "positive")  # generation batches between held-out evals
    eval_prompts: int = checked(32, "positive")  # held-out prompts sampled per eval
    eval_samples: int = checked(4, "positive")  # completions per held-out prompt
    verbose: int = 1


@dataclasses.dataclass
class OnlineRecipeConfig:
    """What a GRPO or an RLOO config holds besides its own section (`grpo:` / `rloo:`)."""

    run_dir: str = "runs/online"
    seed: int = 0
    data: PromptData = dataclasses.field(default_factory=PromptData)
    model: FineTuneModel = dataclasses.field(default_factory=FineTuneModel)
    # each a reward spec, or {reward: SPEC, weight: W} (kzoo.alignment.rewards)
    rewards: list[str | dict[str, Any]] = dataclasses.field(
        default_factory=lambda: ["format_ends"])
    generation: Generation = dataclasses.field(default_factory=Generation)
    train: OnlineTrain = dataclasses.field(default_factory=OnlineTrain)
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    # lm-eval tasks scored before and after training, into metrics.json (kzoo.training.evaluation)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


def online_config(config, algorithm: str):
    """The `kzoo.alignment.rl.OnlineConfig` of a GRPO / RLOO recipe config."""
    from kzoo.alignment.rl import OnlineConfig

    section = getattr(config, algorithm)
    gen, train = config.generation, config.train
    fields = {f.name for f in dataclasses.fields(OnlineConfig)}
    own = {k: v for k, v in dataclasses.asdict(section).items() if k in fields}
    result = OnlineConfig(algorithm=algorithm, batch_size=train.batch_size,
                          steps_per_generation=train.steps_per_generation,
                          **{k: v for k, v in dataclasses.asdict(gen).items() if k in fields},
                          **own)
    result.check()
    return result


def check_reference(mode: str, beta: float, lora_enabled: bool, section: str,
                    prompt_kl_coef: float = 0.0) -> str:
    """The reference the run uses: "none", "copy" or "adapters_off" (checked)."""
    modes = ("auto", "none", "copy", "adapters_off")
    if mode not in modes:
        raise ValueError(f"{section}.reference must be one of {list(modes)}. Received: {mode!r}")
    needed = beta > 0 or prompt_kl_coef > 0
    if mode == "auto":
        mode = "none" if not needed else "adapters_off" if lora_enabled else "copy"
    if mode == "adapters_off" and not lora_enabled:
        raise ValueError(f"{section}.reference: adapters_off needs lora.enabled: true")
    if mode == "none" and needed:
        raise ValueError(f"{section}.beta={beta} and {section}.prompt_kl_coef={prompt_kl_coef} "
                         f"need a reference; set {section}.reference to copy (or adapters_off "
                         "with LoRA), or both to 0")
    return mode


def run_online(config, algorithm: str) -> dict:
    """Check the config, open the run folder and train; returns metrics.json's content.

    `algorithm` ("grpo", "rloo") is also the `kzoo` command that the saved config names."""
    from kzoo.training import open_run

    online = online_config(config, algorithm)  # bad settings fail before any folder exists
    section = getattr(config, algorithm)
    reference = check_reference(section.reference, online.beta, config.lora.enabled, algorithm,
                                online.prompt_kl_coef)
    with open_run(config.run_dir, algorithm) as run_dir:
        return _run_in(run_dir, config, online, reference, algorithm)


def _held_out(policy, tokenizer, held, rewards, config, online, seed):
    from kzoo.alignment.rl import sample_rewards

    if held is None:
        return None
    subset = held.select(range(min(len(held), config.train.eval_prompts)))
    return sample_rewards(policy, tokenizer, subset, rewards, config.train.eval_samples,
                          online.max_new_tokens, online.sampler, config.data.template,
                          online.max_prompt_length, seed=seed, jit_compile=online.jit_compile)


def _run_in(run_dir, config, online, reference_mode: str, command: str) -> dict:
    import keras

    from kzoo.alignment.dpo import frozen_copy
    from kzoo.alignment.rewards import reward_set_from_config
    from kzoo.alignment.rl import Diverged, build_trainer, train_online
    from kzoo.alignment.sft import load_tokenizer_and_model
    from kzoo.data.prompts import read_prompts, split_prompts
    from kzoo.training import rerun_header, save_config
    from kzoo.training.recipe import prepare_tuning, save_tuned, tuning_optimizer

    set_random_seed(config.seed)
    evaluation = RecipeEval(config.eval)  # tasks and their data checked before any work
    data, train = config.data, config.train
    prompts = read_prompts(data.path)
    held = None
    if data.held_out_fraction > 0 and len(prompts) > 1:
        prompts, held = split_prompts(prompts, data.held_out_fraction, data.split_seed)
    row_length = online.max_prompt_length + online.max_new_tokens + 1
    tokenizer, policy = load_tokenizer_and_model(
        config.model.preset, config.model.args, config.model.init_from, config.model.tokenizer,
        row_length)
    rewards = reward_set_from_config(config.rewards, policy_tokenizer=tokenizer)
    reference = frozen_copy(policy) if reference_mode == "copy" else None
    policy = prepare_tuning(policy, config.lora, train)
    if reference_mode == "adapters_off":
        reference = "adapters_off"
    trainer = build_trainer(policy, online, tuning_optimizer(train, keras.optimizers.Adam))
    evaluate = lambda s: _held_out(policy, tokenizer, held, rewards, config, online, s)  # noqa: E731
    before = evaluate(config.seed + 7)
    eval_before = evaluation.score(policy, tokenizer)
    jsonl = run_dir.root / "metrics.jsonl"

    def on_step(step, logs):
        if step % train.eval_interval == 0 or step == train.steps:
            result = evaluate(config.seed + 7)
            if result is not None:
                logs.update({f"held_out/{k}": v for k, v in result.items() if k != "samples"})
        with jsonl.open("a") as f:
            f.write(json.dumps(logs) + "\n")
        if train.verbose:
            shown = {k: logs[k] for k in ("reward", "kl", "entropy", "frac_reward_zero_std",
                                          "held_out/reward") if k in logs}
            print(f"{online.algorithm.upper()} batch {step}/{train.steps}: "
                  + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()), flush=True)

    weights = run_dir.root / "policy.weights.h5"
    try:
        history = train_online(trainer, tokenizer, prompts, rewards, online, train.steps,
                               reference=reference, template=data.template, seed=config.seed,
                               on_step=on_step)
    except Diverged as error:
        policy.save_weights(str(weights))
        raise DivergedError(f"{error}; the last good weights are in {weights}; lower "
                            "train.learning_rate and rerun") from None
    _write_csv(run_dir.metrics, history)
    after = evaluate(config.seed + 7)
    save_config(config, run_dir.config, header=rerun_header(command, run_dir.config))
    tokenizer.save(run_dir.tokenizer)
    result = {
        "split": {"train_prompts": len(prompts), "held_out_prompts": 0 if held is None
                  else len(held), "held_out_fraction": data.held_out_fraction},
        "rewards": rewards.names,
        "held_out_before": before,
        "held_out_after": after,
        "timing": _timing(history),
        "history": history,
        "eval": compare(eval_before, evaluation.score(policy, tokenizer)),
    }
    (run_dir.root / "metrics.json").write_text(json.dumps(result, indent=1))
    save_tuned(policy, run_dir.model, run_dir.root / "adapters.safetensors")
    run_dir.mark(online.algorithm, "finished")
    return result


def _timing(history: list[dict]) -> dict:
    generation = sum(h["seconds/generation"] for h in history)
    total = sum(h["seconds/step"] for h in history)
    return {"seconds": total, "generation_share": generation / total if total else 0.0,
            "tokens_per_second": float(sum(h["tokens_per_second"] * h["seconds/generation"]
                                           for h in history) / max(generation, 1e-9))}


def _write_csv(path, history: list[dict]):
    import csv

    names = list(dict.fromkeys(k for h in history for k in h))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(history)


def summary(result: dict) -> str:
    """The lines a recipe prints at the end."""
    before, after = result["held_out_before"], result["held_out_after"]
    lines = [f"rewards: {', '.join(result['rewards'])}"]
    if before and after:
        lines.append(f"held-out mean reward: {before['reward']:.4f} -> {after['reward']:.4f} "
                     f"({after['samples']} samples)")
    t = result["timing"]
    lines.append(f"{t['seconds']:.1f} s, {100 * t['generation_share']:.0f}% generating at "
                 f"{t['tokens_per_second']:.0f} tokens/s")
    return "\n".join(lines)


__all__ = ["DivergedError", "Generation", "OnlineRecipeConfig", "OnlineTrain", "PromptData",
           "run_online", "summary"]
