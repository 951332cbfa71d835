"""Alignment: the seed's second stage, tuning a pre-trained model on demonstrations and feedback.

- `sft`: `SFTModel`, supervised fine-tuning on instruction records (loss on the response only);
- `dpo`: `DPOModel`, the DPO family on (chosen, rejected) pairs against a frozen reference;
- `reward`: `RewardModel`, a Bradley-Terry reward model on pairs;
- `kto`: `KTOModel`, unpaired thumbs-up / thumbs-down feedback;
- `orpo`: `ORPOModel`, odds-ratio preference optimisation on pairs, with no reference model;
- `base`: `PolicyModel`, what these models share (policy, reference modes, log-prob helpers,
  metrics, `compile`, config);
- `rewards`: reward functions (built-ins, `file.py:function`, reward-model run folders);
- `rl`, `online`, `rollout`: on-policy GRPO and RLOO (`PolicyGradientModel`, `train_online`);
- `feedback_loop`: pre-train, sample, rate, DPO and measure, in miniature.

Each wraps a policy (and where needed a frozen reference) in a Keras model with a custom
`train_step`; the run machinery they share is `kzoo.training`.

Example:
```python
import kzoo
from kzoo.alignment import DPOModel
policy = kzoo.models.CausalLM.from_preset("gpt_nano", vocab_size=256)
dpo = DPOModel(policy, beta=0.1)
```
"""

from kzoo.alignment.dpo import DPOModel, compute_reference_logps, frozen_copy
from kzoo.alignment.kto import KTOModel, compute_unpaired_reference_logps, implied_reward_accuracy
from kzoo.alignment.online import PolicyGradientModel
from kzoo.alignment.orpo import ORPOModel
from kzoo.alignment.reward import RewardModel
from kzoo.alignment.rewards import Reward, RewardSet, load_reward, reward_set_from_config
from kzoo.alignment.rl import OnlineConfig, build_trainer, sample_rewards, train_online
from kzoo.alignment.sft import SFTModel, compile_sft, response_nll

__all__ = [
    "DPOModel",
    "KTOModel",
    "ORPOModel",
    "OnlineConfig",
    "PolicyGradientModel",
    "Reward",
    "RewardModel",
    "RewardSet",
    "SFTModel",
    "build_trainer",
    "compile_sft",
    "compute_reference_logps",
    "compute_unpaired_reference_logps",
    "frozen_copy",
    "implied_reward_accuracy",
    "load_reward",
    "response_nll",
    "reward_set_from_config",
    "sample_rewards",
    "train_online",
]
