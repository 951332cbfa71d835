"""Supervised fine-tuning (SFT) with the loss on response tokens only, through `model.fit`.

The data (`kzoo.data.instruction.sft_dataset`) yields `(x, y, sample_weight)` where the weight is
1.0 on response targets and 0.0 on prompt and padding targets. `SFTModel` (on the alignment base,
`kzoo.alignment.base.PolicyModel`, with no reference) divides by the response tokens of the
global batch, and its logged loss is weighted by tokens across batches, so an epoch's `val_loss`
is exactly `response_nll` of the held-out rows. `compile_sft` keeps the older way: a plain
`CausalLM` compiled with a sample-weighted Keras loss (its epoch loss averages batches).

Example:
```python
import keras
from kzoo.data.instruction import encode_sft, read_instruction_records, sft_dataset
from kzoo.models import CausalLM
from kzoo.tokenizers import ByteTokenizer
from kzoo.alignment.sft import compile_sft
records = read_instruction_records("../shared/data/instruction-data.json")
arrays = encode_sft(records, ByteTokenizer(), max_length=256)
model = CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=256)
sft = SFTModel(model)
sft.compile(optimizer=keras.optimizers.AdamW(1e-3))
sft.fit(sft_dataset(arrays, batch_size=16), epochs=1)
```
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from kzoo import backend
from kzoo.alignment.base import PolicyModel, global_token_mean


@keras.saving.register_keras_serializable(package="kzoo")
class SFTModel(PolicyModel):
    """Trains `policy` on `(x, y, sample_weight)` batches: NLL per weighted (response) target.

    The loss of a step is the summed NLL of the weighted targets over the global batch's
    weight (under `tf.distribute` too); the logged `loss` is weighted by tokens across
    batches. With no `sample_weight` every target counts.

    Args:
        policy: CausalLM. the model being tuned.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:
    ```python
    import numpy as np
    from kzoo.models import CausalLM
    from kzoo.alignment.sft import SFTModel
    sft = SFTModel(CausalLM.from_preset("gpt_nano"))
    sft.compile(optimizer="adamw")
    ids = np.array([[1, 2, 3, 4]])
    sft.train_on_batch(ids[:, :-1], ids[:, 1:], sample_weight=np.array([[0.0, 1.0, 1.0]]))
    ```
    """

    takes_reference = False

    def __init__(self, policy, **kwargs):
        super().__init__(policy, **kwargs)
        self.track(("loss",))

    def call(self, inputs, training=False):
        """The policy's logits (batch, seq, vocab)."""
        return self.policy(inputs, training=training)

    def _loss(self, data, training):
        x, y, weight = keras.utils.unpack_x_y_sample_weight(data)
        logits = self.policy(x, training=training)  # (batch, seq, vocab)
        nll = ops.sparse_categorical_crossentropy(
            ops.cast(y, "int32"), ops.cast(logits, "float32"), from_logits=True)  # (batch, seq)
        weight = ops.ones_like(nll) if weight is None else ops.cast(weight, "float32")
        tokens = ops.sum(weight)
        share, logged = global_token_mean(ops.sum(nll * weight), tokens)
        return share, {"loss": logged, "tokens": tokens}

    def _update_metrics(self, aux):
        # Token-weighted: the epoch's loss is the mean NLL per response token of the epoch.
        return self.update_means({"loss": aux["loss"]}, aux["tokens"])

    @backend.stateful_step
    def train_step(self, data):
        return self._update_metrics(self.apply_policy_gradients(
            lambda: self._loss(data, training=True)))

    @backend.stateful_step
    def test_step(self, data):
        return self._update_metrics(self._loss(data, training=False)[1])


def response_loss_fn():
    """Next-token cross-entropy averaged over the weighted (response) targets."""
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight", name="response_loss"
    )


def compile_sft(model, optimizer="adamw", **kwargs):
    """Compile `model` for SFT: response-only loss; other `compile` arguments pass through.

    Example:
    ```python
    compile_sft(model, keras.optimizers.AdamW(3e-4))
    ```
    """
    model.compile(optimizer=optimizer, loss=response_loss_fn(), **kwargs)
    return model


def response_nll(model, arrays: dict, batch_size: int = 32) -> float:
    """Mean negative log-likelihood per response token of encoded SFT or preference rows.

    Args:
        model: CausalLM. the model to score.
        arrays: dict. "token_ids" and "loss_mask", shaped (N, L) or (N, 2, L).
        batch_size: int. rows per forward pass.

    Example:
    ```python
    response_nll(model, arrays)   # e.g. 1.73 nats per token
    ```
    """
    from kzoo.alignment.base import sequence_logps

    length = arrays["token_ids"].shape[-1]
    ids = arrays["token_ids"].reshape(-1, length)  # (rows, L): pairs flattened to rows
    mask = arrays["loss_mask"].reshape(-1, length)
    total = 0.0
    for s in range(0, len(ids), batch_size):
        logps = sequence_logps(model, ids[s: s + batch_size], mask[s: s + batch_size])
        total += float(np.sum(keras.ops.convert_to_numpy(logps)))  # a torch tensor too
    tokens = float(mask[:, 1:].sum())
    if tokens == 0:
        raise ValueError("`arrays` holds no response tokens to score (loss_mask is all zero).")
    return -total / tokens


def load_tokenizer_and_model(preset: str, args: dict, init: str | None, tokenizer: str,
                             max_length: int):
    """The tokenizer and starting model of a fine-tuning recipe (SFT, DPO, reward).

    Args:
        preset: str. `CausalLM` preset used when `init` is None.
        args: dict. preset overrides (vocab size and length default to the tokenizer's/data's).
        init: str or None. the model to start from: a `.keras` file, a kzoo run folder, a
            Hugging Face folder or a keras-hub preset folder (`kzoo.models.sources`; no code
            from any of them runs).
        tokenizer: str. "auto" (the one that came with `init`; "byte" without one), "byte",
            or a saved tokenizer folder (kzoo's or a Hugging Face layout).
        max_length: int. the data's row length; the model needs `max_length - 1` positions.

    Example:
    ```python
    tok, model = load_tokenizer_and_model("gpt_nano", {}, None, "auto", 128)
    ```
    """
    import kzoo  # noqa: F401  (registers the kzoo classes for load_model)
    from kzoo.models import CausalLM
    from kzoo.models.sources import load_model_and_tokenizer, resolve_tokenizer
    from kzoo.tokenizers import check_vocab

    if init:
        model, tok = load_model_and_tokenizer(init, tokenizer, compile=True)
    else:
        tok = resolve_tokenizer(tokenizer, None)
        model = CausalLM.from_preset(preset, **{"vocab_size": tok.vocab_size,
                                                "max_sequence_length": max_length, **args})
        check_vocab(tok, model.vocab_size)
    if model.max_sequence_length < max_length - 1:
        raise ValueError(
            f"max_length={max_length} needs a model with at least {max_length - 1} positions; "
            f"the model has max_sequence_length={model.max_sequence_length}"
        )
    return tok, model
