"""GRPO: on-policy RL from rewards, with G sampled completions per prompt as the baseline.

    python recipes/grpo.py --config recipes/configs/gpt/baby_instruction_grpo.yaml
    kzoo grpo --config gpt/baby_instruction_grpo
    python recipes/grpo.py --config CONFIG --set grpo.beta=0.04 --set generation.temperature=0.9

Every generation batch takes `train.batch_size / generation.num_generations` training prompts,
samples G completions of each with the compiled, KV-cached generator, scores them with the
`rewards:` list (a built-in name, `path/to/file.py:function_name` called as TRL calls reward
functions, or a reward-model run folder; weights with `{reward: ..., weight: ...}`), and turns
each score into an advantage against its group (`grpo.scale_rewards`: group / batch / none).
The loss is the clipped ratio (`grpo.epsilon`, `grpo.epsilon_high`) per token, reduced by
`grpo.loss_type` (dapo by default: every completion token of the batch weighs the same), plus
`grpo.beta` times the k3 KL to the reference (beta 0: no reference in memory).
`grpo.num_iterations` passes over each batch keep the sampling-time log-probs.

The run folder holds config.yaml, tokenizer/, model.keras, metrics.jsonl (a line per
generation batch, written as it trains), metrics.csv and metrics.json (held-out mean reward
before and after, the time split between generating and training). Exit status 2 on bad
input, 3 on a non-finite loss (the last good weights are kept in policy.weights.h5).
"""

import dataclasses
import sys

from kzoo.recipes._online import DivergedError, OnlineRecipeConfig, run_online, summary
from kzoo.training.config import checked
from kzoo.training.recipe import run_recipe


@dataclasses.dataclass
class GRPOSection:
    beta: float = checked(0.0, "non_negative")  # k3 KL weight; 0 keeps no reference model
    epsilon: float = checked(0.2, "positive")
    epsilon_high: float | None = checked(None, "positive")  # None: epsilon (DAPO: 0.28)
    scale_rewards: str = "group"  # "group", "batch" or "none"
    loss_type: str = "dapo"  # "dapo", "bnpo", "grpo" or "dr_grpo"
    mask_truncated_completions: bool = False
    num_iterations: int = checked(1, "positive")
    # k3 KL to the reference on the prompt tokens: keeps what the policy says outside its
    # completions (the policy-gradient loss never touches them); needs a reference
    prompt_kl_coef: float = checked(0.0, "non_negative")
    zero_std_warn_steps: int = checked(10, "positive")
    reference: str = "auto"  # "auto", "none", "copy" or "adapters_off"


@dataclasses.dataclass
class GRPOConfig(OnlineRecipeConfig):
    run_dir: str = "runs/grpo"
    grpo: GRPOSection = dataclasses.field(default_factory=GRPOSection)


def run(config: GRPOConfig) -> dict:
    return run_online(config, "grpo")


def main(argv=None) -> int:
    return run_recipe(__doc__, GRPOConfig, run, argv, example="grpo.beta=0.04",
                      fatal=(DivergedError,), report=summary)


if __name__ == "__main__":
    sys.exit(main())
