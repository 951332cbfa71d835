"""Losses for preference fine-tuning: the DPO-family registry and the reward model's loss.

Example:
```python
from kzoo import losses
losses.list_losses()   # ['conservative', 'hinge', 'ipo', 'robust', 'sigmoid']
```
"""

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
    "hinge_loss",
    "ipo_loss",
    "length_normalized",
    "list_losses",
    "pairwise_accuracy",
    "register",
    "robust_loss",
    "sigmoid_loss",
]
