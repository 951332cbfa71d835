"""Losses for preference fine-tuning: the DPO-family registry, the reward model's loss and the
KTO-family losses for unpaired thumbs up / down feedback (`kzoo.losses.kto`), and the
policy-gradient pieces of GRPO and RLOO (`kzoo.losses.policy_gradient`: advantages, the
clipped surrogate, the k3 KL), and ORPO's reference-free odds-ratio loss (`kzoo.losses.orpo`).

Example:
```python
from kzoo import losses
losses.list_losses()   # ['conservative', 'hinge', 'ipo', 'robust', 'sigmoid']
losses.list_unpaired_losses()   # ['apo_zero_unpaired', 'kto']
```
"""

from kzoo.losses import policy_gradient
from kzoo.losses.kto import get_unpaired, kto_kl, kto_loss, list_unpaired_losses
from kzoo.losses.orpo import log_odds_ratio, odds_ratio_loss
from kzoo.losses.preference import (
    get,
    hinge_loss,
    ipo_loss,
    length_normalized,
    list_losses,
    register,
    robust_loss,
    sigmoid_loss,
)
from kzoo.losses.reward import BradleyTerryLoss, pairwise_accuracy

__all__ = [
    "BradleyTerryLoss",
    "get",
    "get_unpaired",
    "hinge_loss",
    "ipo_loss",
    "kto_kl",
    "kto_loss",
    "length_normalized",
    "list_losses",
    "list_unpaired_losses",
    "log_odds_ratio",
    "odds_ratio_loss",
    "pairwise_accuracy",
    "policy_gradient",
    "register",
    "robust_loss",
    "sigmoid_loss",
]
