"""RLOO: REINFORCE with a leave-one-out baseline over G sampled completions per prompt.

    python recipes/rloo.py --config recipes/configs/gpt/baby_instruction_rloo.yaml
    kzoo rloo --config gpt/baby_instruction_rloo
    python recipes/rloo.py --config CONFIG --set rloo.beta=0.1

Sampling and rewards are GRPO's (see `recipes/grpo.py`). Each completion's advantage is its
reward minus the mean reward of the other G - 1 completions of its prompt, after the
sequence-level KL to the reference (k1: log pi_old - log pi_ref summed over the completion)
is subtracted from the reward with weight `rloo.beta`. The loss is REINFORCE on the whole
completion's log-prob; with `rloo.num_iterations` > 1 (or several steps per generation batch)
the sequence ratio to the sampling-time policy is clipped with `rloo.epsilon`.

The run folder is GRPO's: config.yaml, tokenizer/, model.keras, metrics.jsonl, metrics.csv,
metrics.json. Exit status 2 on bad input, 3 on a non-finite loss.
"""

import dataclasses
import sys

from kzoo.recipes._online import DivergedError, OnlineRecipeConfig, run_online, summary
from kzoo.training.config import checked
from kzoo.training.recipe import run_recipe


@dataclasses.dataclass
class RLOOSection:
    beta: float = checked(0.05, "non_negative")  # KL folded into the reward (TRL's default)
    epsilon: float = checked(0.2, "positive")
    epsilon_high: float | None = checked(None, "positive")
    normalize_advantages: bool = False
    num_iterations: int = checked(1, "positive")
    mask_truncated_completions: bool = False
    # k3 KL to the reference on the prompt tokens: keeps what the policy says outside its
    # completions (the policy-gradient loss never touches them); needs a reference
    prompt_kl_coef: float = checked(0.0, "non_negative")
    zero_std_warn_steps: int = checked(10, "positive")
    reference: str = "auto"  # "auto", "none", "copy" or "adapters_off"


@dataclasses.dataclass
class RLOOConfig(OnlineRecipeConfig):
    run_dir: str = "runs/rloo"
    rloo: RLOOSection = dataclasses.field(default_factory=RLOOSection)


def run(config: RLOOConfig) -> dict:
    return run_online(config, "rloo")


def main(argv=None) -> int:
    return run_recipe(__doc__, RLOOConfig, run, argv, example="rloo.beta=0.1",
                      fatal=(DivergedError,), report=summary)


if __name__ == "__main__":
    sys.exit(main())
