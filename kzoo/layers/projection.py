"""`Projection`: the `Dense` layer inside kzoo's attention and feed-forward blocks, whose LoRA
update is computed in factored form.

Keras' `Dense.enable_lora` adds `lora_kernel_a` (in, r) and `lora_kernel_b` (r, out); its float
`call` then multiplies by `kernel + scale * A @ B`, which builds a full (in, out) matrix on every
call and, in training, a full-size gradient for it: for the 124M GPT-2 shape that is another
copy of the weights in activations and again in gradients. `Projection` computes
`x @ W + scale * (x @ A) @ B` instead (as Keras' own int8 path and PEFT do), so a LoRA step
holds only rank-r intermediates besides the frozen weights. Without adapters, and for quantized
kernels, it is exactly `Dense`. `lora_dropout` drops the adapter input only (PEFT's LoRA
dropout), in training.

Example:
```python
import numpy as np
from kzoo.layers.projection import Projection
layer = Projection(8)
layer.build((None, 4))
layer.enable_lora(2)
layer(np.ones((3, 4), "float32")).shape   # (3, 8)
```
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kzoo")
class Projection(keras.layers.Dense):
    """`keras.layers.Dense` with a factored LoRA update and adapter-input dropout.

    Args:
        lora_dropout: float. dropout rate on the adapter input during training (0: none).
        **kwargs: `keras.layers.Dense` arguments.
    """

    def __init__(self, *args, lora_dropout: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.lora_dropout = float(lora_dropout)
        self._dropout_seed = None

    def set_lora_dropout(self, rate: float) -> None:
        """Set the adapter-input dropout rate (before the model is compiled)."""
        self.lora_dropout = float(rate)
        if rate > 0 and self._dropout_seed is None:
            # New state on a built layer, as Keras' own enable_lora adds its adapters.
            self._tracker.unlock()
            self._dropout_seed = keras.random.SeedGenerator(name="lora_dropout_seed")
            self._tracker.lock()

    def call(self, inputs, training=None):
        if not self.lora_enabled:
            return super().call(inputs, training=training)
        x = ops.matmul(inputs, self._kernel)
        adapter_in = inputs
        if training and self.lora_dropout > 0:
            adapter_in = keras.random.dropout(inputs, self.lora_dropout,
                                              seed=self._dropout_seed)
        update = ops.matmul(ops.matmul(adapter_in, self.lora_kernel_a), self.lora_kernel_b)
        x = ops.add(x, ops.multiply(update, self.lora_alpha / self.lora_rank))
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def quantize(self, mode=None, type_check=True, config=None):
        # Keras refuses subclasses (their call may differ); only the float call differs here
        # and the quantized calls are Dense's own, LoRA included.
        return super().quantize(mode, type_check=False, config=config)

    def get_config(self):
        return {**super().get_config(), "lora_dropout": self.lora_dropout}
