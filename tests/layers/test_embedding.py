import keras
import numpy as np
import pytest
from keras import ops

from kzoo.layers import PositionEmbedding, TokenEmbedding


@pytest.mark.parametrize("tie", [True, False])
def test_token_embedding_reverse(check_roundtrip, tie):
    emb = TokenEmbedding(10, 4, tie_weights=tie)
    ids = np.array([[1, 2, 3]])
    h = emb(ids)
    logits = emb(h, reverse=True)
    assert tuple(logits.shape) == (1, 3, 10)
    kernel = emb.embeddings.numpy().T if tie else emb.reverse_embeddings.numpy()
    np.testing.assert_allclose(logits, np.asarray(h) @ kernel, atol=1e-6)
    assert len(emb.weights) == (1 if tie else 2)
    check_roundtrip(emb, ids)


def test_token_embedding_trains_tied(check_fit_changes_all_weights):
    emb = TokenEmbedding(10, 4, tie_weights=False)
    ids = np.arange(10).reshape(2, 5)
    check_fit_changes_all_weights(
        emb, ids, make_head=lambda h: emb(h, reverse=True)
    )


def test_position_embedding(check_roundtrip, check_fit_changes_all_weights):
    pos = PositionEmbedding(16, 4)
    ids = np.arange(5)[None]
    np.testing.assert_allclose(pos(ids)[0], pos.embeddings.numpy()[:5])
    check_roundtrip(pos, ids)
    check_fit_changes_all_weights(PositionEmbedding(16, 4), np.tile(np.arange(5), (2, 1)))


def test_bad_sizes():
    with pytest.raises(ValueError, match="vocab_size"):
        TokenEmbedding(0, 4)
    with pytest.raises(ValueError, match="max_length"):
        PositionEmbedding(-1, 4)


def test_embedding_serializable_name():
    assert keras.saving.get_registered_name(TokenEmbedding) == "kzoo>TokenEmbedding"


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_token_embedding_matches_keras_hub_reversible_embedding(tie, dtype):
    # keras-hub's ReversibleEmbedding is the same layer: same weights -> same ids-to-vectors
    # and vectors-to-logits, in the policy's compute dtype (bfloat16 under mixed_bfloat16).
    import keras_hub

    ours = TokenEmbedding(12, 6, tie_weights=tie, dtype=dtype)
    hub = keras_hub.layers.ReversibleEmbedding(12, 6, tie_weights=tie, dtype=dtype)
    ids = np.array([[0, 5, 11], [3, 3, 7]])
    ours.build(ids.shape)
    hub.build(ids.shape)
    rng = np.random.default_rng(0)
    for a, b in zip(ours.weights, hub.weights, strict=True):
        value = rng.normal(size=tuple(a.shape)).astype("float32")
        a.assign(value)
        b.assign(value)
    h, want_h = ours(ids), hub(ids)
    assert keras.backend.standardize_dtype(h.dtype) == keras.backend.standardize_dtype(
        want_h.dtype) == ours.compute_dtype
    np.testing.assert_array_equal(np.asarray(ops.cast(h, "float32")),
                                  np.asarray(ops.cast(want_h, "float32")))
    logits, want = ours(h, reverse=True), hub(want_h, reverse=True)
    assert keras.backend.standardize_dtype(logits.dtype) == ours.compute_dtype
    np.testing.assert_allclose(np.asarray(ops.cast(logits, "float32")),
                               np.asarray(ops.cast(want, "float32")), rtol=1e-2, atol=1e-2)


def test_embedding_defaults_tie_and_uniform_initializer():
    emb = TokenEmbedding(10, 4)
    emb.build()
    assert emb.tie_weights is True and len(emb.weights) == 1
    pos = PositionEmbedding(8, 4)
    for layer in (emb, pos):
        config = layer.get_config()["embeddings_initializer"]
        assert config["class_name"] == "RandomUniform"
        assert config["config"]["minval"] == -0.05 and config["config"]["maxval"] == 0.05


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_position_embedding_symbolic_shape_and_dtype(dtype):
    pos = PositionEmbedding(16, 4, dtype=dtype)
    ids = keras.Input((5,), dtype="int32")
    out = pos(ids)
    assert tuple(out.shape) == (None, 5, 4)
    assert pos.compute_output_shape((2, 5)) == (2, 5, 4)
    value = pos(np.arange(5)[None])
    assert keras.backend.standardize_dtype(value.dtype) == pos.compute_dtype


def test_weight_names_and_initializer_reach_every_table():
    # The names are what the optimizer's no-decay split and checkpoint converters look up.
    emb = TokenEmbedding(10, 4, tie_weights=False, embeddings_initializer="zeros")
    pos = PositionEmbedding(8, 4, embeddings_initializer="ones")
    emb.build()
    pos.build()
    assert [w.name for w in emb.weights] == ["embeddings", "reverse_embeddings"]
    assert [w.name for w in pos.weights] == ["embeddings"]
    assert [tuple(w.shape) for w in emb.weights] == [(10, 4), (4, 10)]
    assert all(not np.asarray(w.numpy()).any() for w in emb.weights)
    assert np.all(pos.embeddings.numpy() == 1.0) and tuple(pos.embeddings.shape) == (8, 4)


@pytest.mark.parametrize("make, message", [
    (lambda: TokenEmbedding(0, 4), "`vocab_size` must be a positive integer. Received: "
                                   "vocab_size=0"),
    (lambda: TokenEmbedding(5, -2), "`hidden_dim` must be a positive integer. Received: "
                                    "hidden_dim=-2"),
    (lambda: PositionEmbedding(0, 4), "`max_length` must be a positive integer. Received: "
                                      "max_length=0"),
    (lambda: PositionEmbedding(8, 2.0), "`hidden_dim` must be a positive integer. Received: "
                                        "hidden_dim=2.0"),
])
def test_bad_sizes_name_the_argument(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value) == message
