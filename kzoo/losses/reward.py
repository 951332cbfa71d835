"""Bradley-Terry pairwise loss and accuracy for reward models trained with `fit`."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kzoo")
class BradleyTerryLoss(keras.losses.Loss):
    """-log sigmoid(r_chosen - r_rejected), the Bradley-Terry negative log-likelihood.

    `y_pred` is (batch, 2): column 0 is the chosen response's reward, column 1 the rejected one's.
    `y_true` is ignored (the order of the columns is the label), so pass zeros of shape (batch,).

    Args:
        margin: float. an optional margin subtracted from the reward gap (Llama-2 style); 0 is
            the plain Bradley-Terry loss.
        name: str. the loss's name.
        **kwargs: passed to `keras.losses.Loss` (for example `reduction`).

    Example:
    ```python
    import numpy as np
    from kzoo.losses import BradleyTerryLoss
    BradleyTerryLoss()(np.zeros(2), np.array([[1.0, 0.0], [0.0, 0.0]]))  # mean(0.3133, 0.6931)
    ```
    """

    def __init__(self, margin: float = 0.0, name: str = "bradley_terry", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = margin

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")  # (batch, 2)
        return -ops.log_sigmoid(y_pred[:, 0] - y_pred[:, 1] - self.margin)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


@keras.saving.register_keras_serializable(package="kzoo")
def pairwise_accuracy(y_true, y_pred):
    """1.0 where the chosen reward (column 0 of `y_pred`) beats the rejected one, else 0.0.

    Example:
    ```python
    import numpy as np
    from kzoo.losses import pairwise_accuracy
    pairwise_accuracy(np.zeros(2), np.array([[1.0, 0.0], [0.0, 2.0]]))  # [1.0, 0.0]
    ```
    """
    y_pred = ops.cast(y_pred, "float32")
    return ops.cast(y_pred[:, 0] > y_pred[:, 1], "float32")
