"""Gradient accumulation (Keras optimizers' `gradient_accumulation_steps`) and activation
checkpointing of the transformer blocks (`CausalLM(remat=True)`)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kzoo.alignment.sft import response_loss_fn
from kzoo.models import CausalLM
from kzoo.training.optimizers import AdamW

TINY = dict(vocab_size=32, num_layers=2, num_heads=2, hidden_dim=16, max_sequence_length=16)


def tiny(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    return CausalLM(**{**TINY, **overrides})


def rows(n=8, length=13, seed=1):
    return np.random.default_rng(seed).integers(0, TINY["vocab_size"], (n, length)).astype(
        "int32")


def values(model):
    return [np.array(v) for v in model.trainable_weights]


def dense_grads(model, loss_fn):
    with tf.GradientTape() as tape:
        loss = loss_fn()
    grads = tape.gradient(loss, model.trainable_weights)
    return float(loss), [np.asarray(tf.convert_to_tensor(g)) for g in grads]


# ----------------------------------------------------------------------------- accumulation
@pytest.mark.parametrize("make_optimizer", [
    lambda n: keras.optimizers.SGD(0.5, gradient_accumulation_steps=n),
    lambda n: AdamW(1e-2, weight_decay=0.1, global_clipnorm=0.5,
                    gradient_accumulation_steps=n),
], ids=["sgd", "adamw_clipped"])
def test_accumulated_micro_batches_equal_one_big_batch(make_optimizer):
    x = rows(8)
    big = tiny()
    big.compile(optimizer=make_optimizer(None))
    big.fit(x[:, :-1], x[:, 1:], batch_size=8, epochs=2, shuffle=False, verbose=0)  # 2 updates

    small = tiny()
    start = values(small)
    small.compile(optimizer=make_optimizer(4))
    small.fit(x[:3, :-1], x[:3, 1:], batch_size=2, epochs=1, shuffle=False, verbose=0)
    for before, after in zip(start, values(small)):  # 2 micro-batches: no update yet
        np.testing.assert_array_equal(before, after)
    small = tiny()
    small.compile(optimizer=make_optimizer(4))
    small.fit(x[:, :-1], x[:, 1:], batch_size=2, epochs=2, shuffle=False, verbose=0)
    assert int(small.optimizer.iterations) == 2  # updates, not micro-steps
    for a, b in zip(values(big), values(small)):
        np.testing.assert_allclose(b, a, atol=2e-6)


def test_sft_response_loss_accumulates_the_mean_of_micro_batch_means():
    """`mean_with_sample_weight` divides each micro-batch by its own response-token count, so
    N accumulated micro-batches take the mean of their means: the big batch's per-token mean
    only when every micro-batch has as many response tokens."""
    x = rows(4)
    ids, targets = x[:, :-1], x[:, 1:]
    weights = np.zeros(targets.shape, "float32")
    weights[0, 2:] = weights[1, 9:] = 1.0  # micro-batch 1: 10 + 3 response tokens (of 12)
    weights[2, 5:] = weights[3, 11:] = 1.0  # micro-batch 2: 7 + 1
    loss = response_loss_fn()
    model = tiny()

    def grads_of(part):
        return dense_grads(model, lambda: loss(targets[part], model(ids[part]), weights[part]))[1]

    micro = [grads_of(slice(0, 2)), grads_of(slice(2, 4))]
    mean_of_means = [(a + b) / 2 for a, b in zip(*micro)]
    whole = grads_of(slice(0, 4))
    assert max(np.abs(a - b).max() for a, b in zip(mean_of_means, whole)) > 1e-4

    lr = 0.5
    start = values(model)
    model.compile(optimizer=keras.optimizers.SGD(lr, gradient_accumulation_steps=2),
                  loss=response_loss_fn())
    model.fit(ids, targets, sample_weight=weights, batch_size=2, shuffle=False, verbose=0)
    for before, after, grad in zip(start, values(model), mean_of_means):
        np.testing.assert_allclose(after, before - lr * grad, atol=1e-6)

    equal = weights.copy()
    equal[2] = 0.0
    equal[2, 2:] = 1.0  # 10 + 3 = 13 tokens in each micro-batch now
    equal[3] = 0.0
    equal[3, 9:] = 1.0
    weights[:] = equal
    micro = [grads_of(slice(0, 2)), grads_of(slice(2, 4))]
    for a, b, w in zip(*micro, grads_of(slice(0, 4))):
        np.testing.assert_allclose((a + b) / 2, w, atol=1e-6)


# ----------------------------------------------------------------------------- remat
def squared_logits_loss(model, x):
    return lambda: tf.reduce_mean(model(x, training=True) ** 2)


def test_remat_gives_the_same_loss_and_gradients_and_recomputes_the_blocks():
    x = rows(4, 12)
    model = tiny(position_embedding="rope", norm="rmsnorm", activation="swiglu")
    plain_loss, plain = dense_grads(model, squared_logits_loss(model, x))
    calls = []
    for block in model.blocks:
        original = block.call

        def counted(*args, _original=original, **kwargs):
            calls.append(1)
            return _original(*args, **kwargs)

        block.call = counted
    model.remat = True
    remat_loss, remat = dense_grads(model, squared_logits_loss(model, x))
    assert len(calls) == 2 * model.num_layers  # each block ran again in the backward pass
    assert remat_loss == pytest.approx(plain_loss, abs=1e-6)
    for a, b in zip(plain, remat):
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_remat_fit_matches_plain_fit_and_round_trips_the_config():
    x = rows(8)
    trained = []
    for remat in (False, True):
        model = tiny(remat=remat)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        model.fit(x[:, :-1], x[:, 1:], batch_size=4, epochs=1, shuffle=False, verbose=0)
        trained.append(values(model))
    for a, b in zip(*trained):
        np.testing.assert_allclose(b, a, atol=1e-5)
    config = tiny(remat=True).get_config()
    assert config["remat"] is True and CausalLM.from_config(config).remat is True


def test_remat_with_dropout_is_refused():
    with pytest.raises(ValueError, match=r"`remat=True` needs dropout=0.0.*dropout=0.1"):
        tiny(remat=True, dropout=0.1)
    model = tiny(dropout=0.1)
    with pytest.raises(ValueError, match="`remat=True` needs dropout=0.0"):
        model.remat = True
