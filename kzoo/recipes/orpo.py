"""ORPO: odds-ratio preference optimisation on pairs, with no reference model.

    kzoo orpo --config gpt/baby_instruction_orpo
    kzoo orpo --config CONFIG --set orpo.beta=0.2 --set orpo.prompt_nll=false
    python recipes/orpo.py --config recipes/configs/gpt/baby_instruction_orpo.yaml

One stage instead of SFT then DPO: the loss is the policy's NLL of the chosen rows plus beta
times ORPO's odds-ratio term (`kzoo.alignment.orpo.ORPOModel`, TRL's `ORPOTrainer` loss), so
there is no reference model, no copy and no precomputed pass. The data and its split are the
DPO recipe's (`data:` and `model:` sections, pairs split by prompt), as is the `train:`
section (`kzoo.training.recipe.PreferenceTrainConfig`) and `lora:`.

The run folder holds config.yaml, tokenizer/, model.keras (the tuned policy),
policy.weights.h5 (the last good weights, written after every `train.eval_interval` steps),
metrics.csv (one row per interval: step, training and held-out metrics) and metrics.json (the
history, the held-out metrics before and after, the split and the bad-pair counts). A NaN or
exploding loss stops training and keeps the last good weights (exit status 3).
"""

import dataclasses
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo.training.config import checked  # noqa: E402
from kzoo.training.evaluation import EvalConfig  # noqa: E402
from kzoo.training.lora import LoRAConfig  # noqa: E402
from kzoo.training.recipe import (  # noqa: E402
    FineTuneData,
    FineTuneModel,
    PreferenceTrainConfig,
    prepare_tuning,
    run_recipe,
    tune_on_pairs,
)


@dataclasses.dataclass
class ORPOSection:
    beta: float = checked(0.1, "positive")  # weight of the odds-ratio term (the paper's lambda)
    # true: the NLL counts the chosen row's prompt tokens too (TRL); false: its response only
    prompt_nll: bool = True


@dataclasses.dataclass
class ORPOConfig:
    run_dir: str = "runs/orpo"
    seed: int = 0
    data: FineTuneData = dataclasses.field(default_factory=FineTuneData)
    model: FineTuneModel = dataclasses.field(default_factory=FineTuneModel)
    orpo: ORPOSection = dataclasses.field(default_factory=ORPOSection)
    train: PreferenceTrainConfig = dataclasses.field(default_factory=PreferenceTrainConfig)
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    # lm-eval tasks scored before and after training, into metrics.json (kzoo.training.evaluation)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


def run(config: ORPOConfig) -> dict:
    from kzoo.training import open_run

    with open_run(config.run_dir, "orpo") as run_dir:
        return _run_in(run_dir, config)


def _run_in(run_dir, config: ORPOConfig) -> dict:
    from kzoo.alignment.orpo import ORPOModel
    from kzoo.training import rerun_header

    def build(policy, train, val):  # no reference: nothing to copy or score first
        policy = prepare_tuning(policy, config.lora, config.train)
        return ORPOModel(policy, beta=config.orpo.beta, prompt_nll=config.orpo.prompt_nll), policy

    return tune_on_pairs(run_dir, config, "orpo", rerun_header("orpo", run_dir.config), build)


def main(argv=None) -> int:
    return run_recipe(__doc__, ORPOConfig, run, argv, example="orpo.beta=0.2")


if __name__ == "__main__":
    sys.exit(main())
