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
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo.training.config import between, checked  # noqa: E402
from kzoo.training.evaluation import EvalConfig  # noqa: E402
from kzoo.training.lora import LoRAConfig  # noqa: E402
from kzoo.training.recipe import (  # noqa: E402
    REFERENCE_MODES,
    DivergedError,
    FineTuneData,
    FineTuneModel,
    PreferenceTrainConfig,
    prepare_tuning,
    reference_mode,
    run_recipe,
    tune_on_pairs,
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


TrainConfig = PreferenceTrainConfig  # the older name


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


REFERENCES = REFERENCE_MODES  # the older name
NaNStop = DivergedError  # the older name


def run(config: DPOConfig) -> dict:
    from kzoo import losses
    from kzoo.training import open_run

    losses.get(config.dpo.loss)  # fail before any work on an unknown loss name
    reference_mode("dpo", config.dpo.reference, config.lora.enabled)
    with open_run(config.run_dir, "dpo") as run_dir:
        return _run_in(run_dir, config)


def _run_in(run_dir, config: DPOConfig) -> dict:
    import keras

    from kzoo.alignment.dpo import DPOModel, compute_reference_logps, frozen_copy
    from kzoo.training import rerun_header

    pref = config.dpo

    def build(policy, train, val):
        mode = reference_mode("dpo", pref.reference, config.lora.enabled)
        reference = frozen_copy(policy) if mode == "copy" else None  # before any adapters
        policy = prepare_tuning(policy, config.lora, config.train)
        if mode == "adapters_off":
            reference = "adapters_off"
        elif mode == "precomputed":  # at step 0 the policy is the reference: score pairs once
            for arrays in (train, val):
                arrays["reference_logps"] = compute_reference_logps(
                    policy, arrays, batch_size=config.train.batch_size,
                    average=pref.average_log_prob)
        return DPOModel(policy, reference, loss=pref.loss, beta=pref.beta,
                        label_smoothing=pref.label_smoothing,
                        average_log_prob=pref.average_log_prob, rpo_alpha=pref.rpo_alpha), policy

    return tune_on_pairs(run_dir, config, "dpo", rerun_header("dpo", run_dir.config), build,
                         keras.optimizers.Adam)


def main(argv=None) -> int:
    return run_recipe(__doc__, DPOConfig, run, argv, example="dpo.beta=0.2")

if __name__ == "__main__":
    sys.exit(main())
