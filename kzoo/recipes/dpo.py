"""Direct preference optimisation (DPO family) on preference pairs, usually after SFT.

    python recipes/dpo.py --config recipes/configs/gpt/baby_instruction_dpo.yaml
    kzoo dpo --config gpt/baby_instruction_dpo
    python recipes/dpo.py --config CONFIG --set dpo.loss=ipo --set dpo.beta=0.5

The run folder holds config.yaml, tokenizer/, model.keras (the tuned policy),
policy.weights.h5 (the last good weights, written after every `train.eval_interval` steps),
metrics.csv (one row per interval: step, training and held-out metrics) and metrics.json
(the same history, the held-out implicit-reward accuracy before and after, the split and the
bad-pair counts). The
reference is the starting model: either a frozen copy (`dpo.reference: copy`) or log-probs
computed once before training (`dpo.reference: precomputed`, no second model in memory), or,
with `lora.enabled`, the same network with its adapters skipped (`adapters_off`, the default
then: no copy and no precomputed pass; model.keras holds the merged model, adapters.safetensors
the adapters). A NaN loss or reward stops training and restores the last good weights
(exit status 3).
"""

import dataclasses
import json
import math
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo._quiet import set_random_seed  # noqa: E402
from kzoo.training.config import between, checked  # noqa: E402
from kzoo.training.evaluation import EvalConfig, RecipeEval, compare  # noqa: E402
from kzoo.training.lora import LoRAConfig  # noqa: E402
from kzoo.training.recipe import (  # noqa: E402
    DivergedError,
    FineTuneData,
    FineTuneModel,
    MemoryOptions,
    diverged,
    load_pairs,
    pairs_result,
    run_recipe,
)


@dataclasses.dataclass
class PreferenceConfig:
    loss: str = "sigmoid"
    beta: float = checked(0.1, "positive")
    label_smoothing: float = checked(0.0, between(0, 0.5))  # each loss narrows it
    average_log_prob: bool = False
    # RPO: + rpo_alpha x the policy's mean NLL per chosen token (TRL's "sft" loss term)
    rpo_alpha: float = checked(0.0, "non_negative")
    # "auto": "adapters_off" with lora.enabled (the same network, adapters skipped), else
    # "precomputed" (log-probs scored once before training); or "copy" (a frozen second model)
    reference: str = "auto"


@dataclasses.dataclass
class TrainConfig(MemoryOptions):
    epochs: int = checked(2, "positive")
    batch_size: int = checked(8, "positive")
    learning_rate: float = checked(1e-4, "positive")
    # steps between metrics.csv rows; None: once per epoch
    eval_interval: int | None = checked(None, "positive")
    verbose: int = 2
    jit_compile: bool = True
    max_loss_factor: float | None = 4.0  # stop when the loss exceeds this x its first value


@dataclasses.dataclass
class DPOConfig:
    run_dir: str = "runs/dpo"
    seed: int = 0
    data: FineTuneData = dataclasses.field(default_factory=FineTuneData)
    model: FineTuneModel = dataclasses.field(default_factory=FineTuneModel)
    dpo: PreferenceConfig = dataclasses.field(default_factory=PreferenceConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    # lm-eval tasks scored before and after training, into metrics.json (kzoo.training.evaluation)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


REFERENCES = ("auto", "precomputed", "copy", "adapters_off")
NaNStop = DivergedError  # the older name


def run(config: DPOConfig) -> dict:
    from kzoo import losses
    from kzoo.training import open_run

    losses.get(config.dpo.loss)  # fail before any work on an unknown loss name
    if config.dpo.reference not in REFERENCES:
        raise ValueError(f"dpo.reference must be one of {list(REFERENCES)}. "
                         f"Received: {config.dpo.reference!r}")
    if config.dpo.reference == "adapters_off" and not config.lora.enabled:
        raise ValueError("dpo.reference: adapters_off needs lora.enabled: true (the reference "
                         "is the network with its LoRA adapters skipped)")
    with open_run(config.run_dir, "dpo") as run_dir:
        return _run_in(run_dir, config)


def _run_in(run_dir, config: DPOConfig) -> dict:
    import keras

    from kzoo.alignment.dpo import DPOModel, compute_reference_logps, frozen_copy
    from kzoo.data.preference import preference_dataset
    from kzoo.training import rerun_header, save_config
    from kzoo.training.guard import NaNGuard
    from kzoo.training.recipe import prepare_tuning, save_tuned, tuning_optimizer

    set_random_seed(config.seed)
    evaluation = RecipeEval(config.eval)  # tasks and their data checked before any work
    data, pref = config.data, config.dpo
    tokenizer, policy, train, val, counts = load_pairs(data, config.model)
    mode = pref.reference
    if mode == "auto":
        mode = "adapters_off" if config.lora.enabled else "precomputed"
    reference = frozen_copy(policy) if mode == "copy" else None
    policy = prepare_tuning(policy, config.lora, config.train)
    if mode == "adapters_off":
        reference = "adapters_off"
    elif mode == "precomputed":  # at step 0 the policy is the reference: score pairs once
        for arrays in (train, val):
            arrays["reference_logps"] = compute_reference_logps(
                policy, arrays, batch_size=config.train.batch_size,
                average=pref.average_log_prob)
    dpo = DPOModel(policy, reference, loss=pref.loss, beta=pref.beta,
                   label_smoothing=pref.label_smoothing, average_log_prob=pref.average_log_prob,
                   rpo_alpha=pref.rpo_alpha)
    dpo.compile(optimizer=tuning_optimizer(config.train, keras.optimizers.Adam),
                jit_compile=config.train.jit_compile)
    val_ds = preference_dataset(val, config.train.batch_size, shuffle=False)
    before = dpo.evaluate(val_ds, verbose=0, return_dict=True)
    eval_before = evaluation.score(policy, tokenizer)
    weights = run_dir.root / "policy.weights.h5"
    guard = NaNGuard(policy, checkpoint_path=str(weights),
                     max_loss_factor=config.train.max_loss_factor)
    train_ds = preference_dataset(train, config.train.batch_size, seed=config.seed)
    batches = math.ceil(len(train["token_ids"]) / config.train.batch_size)
    interval = config.train.eval_interval or batches
    if interval < 1:
        raise ValueError(f"train.eval_interval must be >= 1. Received: {interval}")
    rounds = math.ceil(config.train.epochs * batches / interval)  # Keras "epochs" of `interval`
    step = keras.callbacks.LambdaCallback(  # adds the global step before CSVLogger writes
        on_epoch_end=lambda epoch, logs: logs.__setitem__("step", (epoch + 1) * interval))
    history = dpo.fit(train_ds.repeat(), steps_per_epoch=interval, validation_data=val_ds,
                      epochs=rounds, verbose=config.train.verbose, shuffle=False,
                      callbacks=[guard, step, keras.callbacks.CSVLogger(str(run_dir.metrics))])
    after = dpo.evaluate(val_ds, verbose=0, return_dict=True)
    save_config(config, run_dir.config, header=rerun_header("dpo", run_dir.config))
    tokenizer.save(run_dir.tokenizer)
    result = {**pairs_result(data, train, val, counts, before, after, history),
              "stopped_on_nan": guard.stopped_at,
              "eval": compare(eval_before, evaluation.score(policy, tokenizer))}
    (run_dir.root / "metrics.json").write_text(json.dumps(result, indent=1))
    if guard.stopped_at is not None:
        raise diverged(guard, f"the last good weights (after {guard.good_step} good steps) "
                              f"are in {weights}")
    save_tuned(policy, run_dir.model, run_dir.root / "adapters.safetensors")
    run_dir.mark("dpo", "finished")
    return result


def main(argv=None) -> int:
    return run_recipe(__doc__, DPOConfig, run, argv, example="dpo.beta=0.2")

if __name__ == "__main__":
    sys.exit(main())
