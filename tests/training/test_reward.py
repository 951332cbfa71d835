import json

import keras
import numpy as np

from kzoo.alignment.reward import RewardModel, reward_dataset
from kzoo.data.preference import encode_pairs
from kzoo.models import CausalLM
from kzoo.tokenizers import ByteTokenizer

TOK = ByteTokenizer()


def _backbone(seed=0):
    keras.utils.set_random_seed(seed)
    return CausalLM(vocab_size=257, num_layers=1, num_heads=2, hidden_dim=32,
                    max_sequence_length=32)


def _pairs(n, seed):
    """Chosen answers are polite ('please'), rejected ones rude ('now!'): a learnable rule."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        a = int(rng.integers(0, 100))
        records.append({"prompt": f"give {a}:", "chosen": f"{a} please", "rejected": f"{a} now!"})
    return encode_pairs(records, TOK, max_length=24, template="raw")


def test_score_reads_the_last_real_token():
    rm = RewardModel(_backbone())
    ids = np.array([[5, 6, 7, 0, 0], [5, 6, 7, 9, 9]], "int32")
    scores = np.asarray(rm.score(ids, np.array([3, 3])))
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5)  # padding after length ignored
    hidden = np.asarray(rm.backbone.hidden_states(ids[:1]))[0, 2]
    kernel, bias = (w.numpy() for w in rm.head.weights)
    np.testing.assert_allclose(scores[0], hidden @ kernel[:, 0] + bias[0], rtol=1e-4, atol=1e-6)


def test_fit_learns_held_out_pairs():
    train, held_out = _pairs(64, seed=0), _pairs(32, seed=1)
    rm = RewardModel(_backbone())
    rm.compile(optimizer=keras.optimizers.Adam(3e-3))
    before = rm.evaluate(reward_dataset(held_out, 32, shuffle=False), return_dict=True,
                         verbose=0)
    rm.fit(reward_dataset(train, 16), epochs=6, verbose=0, shuffle=False)
    after = rm.evaluate(reward_dataset(held_out, 32, shuffle=False), return_dict=True, verbose=0)
    assert after["loss"] < before["loss"]
    assert after["pairwise_accuracy"] >= 0.9


def test_json_round_trip_and_keras_file(tmp_path):
    rm = RewardModel(_backbone(), name="rm")
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(rm)))
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, RewardModel)
    assert restored.backbone.get_config() == rm.backbone.get_config()
    pairs = _pairs(2, seed=3)
    x = {"token_ids": pairs["token_ids"], "lengths": pairs["lengths"]}
    path = tmp_path / "rm.keras"
    rm.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(rm(x)), rtol=1e-5)


def test_reward_model_on_the_alignment_base_trains_head_and_backbone():
    from kzoo.alignment.base import PolicyModel

    rm = RewardModel(_backbone())
    assert isinstance(rm, PolicyModel) and rm.policy is rm.backbone
    rm.compile(optimizer=keras.optimizers.Adam(1e-2))
    # compile() made the slots at once, for the head as well as the backbone
    tuned = {id(v) for v in rm.tuned_variables()}
    assert {id(v) for v in rm.head.trainable_variables} <= tuned
    assert {id(v) for v in rm.backbone.trainable_variables} <= tuned
    before = [v.numpy().copy() for v in rm.trainable_variables]
    pairs = _pairs(8, seed=4)
    logs = rm.train_on_batch({"token_ids": pairs["token_ids"], "lengths": pairs["lengths"]},
                             np.zeros((8,), "float32"), return_dict=True)
    assert set(logs) == {"loss", "pairwise_accuracy"}
    moved = {v.path: not np.allclose(a, v.numpy()) for a, v in zip(before, rm.trainable_variables)}
    # Bradley-Terry sees only score differences: a shift of every score (the head's bias, the
    # final norm's beta seen through the head) has no gradient. Everything else moves.
    still = {rm.head.bias.path, rm.backbone.final_norm.beta.path}
    assert {path for path, m in moved.items() if not m} == still, moved
