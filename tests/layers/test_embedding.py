import keras
import numpy as np
import pytest

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
