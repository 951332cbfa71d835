import keras
import numpy as np

from kzoo.alignment.sft import compile_sft, response_nll
from kzoo.data.instruction import encode_sft, sft_dataset
from kzoo.models import CausalLM
from kzoo.tokenizers import ByteTokenizer

TOK = ByteTokenizer()


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return CausalLM(vocab_size=257, num_layers=1, num_heads=2, hidden_dim=32,
                    max_sequence_length=32)


def _records():
    return [{"instruction": f"Q{i} " + "x" * i, "input": "", "output": "ok" if i % 2 else "no"}
            for i in range(8)]


def test_logged_loss_is_mean_nll_over_response_tokens_only():
    arrays = encode_sft(_records(), TOK, max_length=24, template="plain")
    model = compile_sft(_model(), "sgd")
    logs = model.evaluate(sft_dataset(arrays, 8, shuffle=False), return_dict=True, verbose=0)
    ids, mask = arrays["token_ids"], arrays["loss_mask"]
    logits = np.asarray(model(ids[:, :-1]), "float64")
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]  # (N, L-1)
    w = mask[:, 1:]
    expected = (nll * w).sum() / w.sum()
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-4)
    np.testing.assert_allclose(response_nll(model, arrays), expected, rtol=1e-4)
    # The unweighted mean over all targets differs: prompts and padding are not counted.
    assert abs(nll.mean() - expected) > 1e-3


def test_prompt_tokens_get_no_gradient_signal():
    """Targets whose weight is 0 (prompt and padding) can be anything: the step is the same."""
    arrays = encode_sft(_records(), TOK, max_length=24, template="plain")
    ds = sft_dataset(arrays, 8, shuffle=False)
    x, y, w = (np.asarray(t) for t in next(iter(ds)))  # numpy: every backend takes it
    y_changed = np.where(np.asarray(w) > 0, np.asarray(y), (np.asarray(y) + 7) % 257)
    steps = []
    for targets in (np.asarray(y), y_changed):
        model = compile_sft(_model(), keras.optimizers.SGD(0.1))
        model.train_on_batch(x, targets, sample_weight=w)
        steps.append([keras.ops.convert_to_numpy(v) for v in model.trainable_variables])
    for a, b in zip(*steps):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_fit_lowers_the_response_loss():
    arrays = encode_sft(_records(), TOK, max_length=24, template="plain")
    model = compile_sft(_model(), keras.optimizers.Adam(3e-3))
    before = response_nll(model, arrays)
    model.fit(sft_dataset(arrays, 8), epochs=30, verbose=0, shuffle=False)
    after = response_nll(model, arrays)
    assert after < 0.5 * before


def test_sft_model_on_the_alignment_base_matches_the_keras_loss_and_steps_alike():
    """SFTModel (PolicyModel, no reference) and compile_sft compute the same batch loss and the
    same SGD step; its epoch loss is the token-weighted mean, i.e. `response_nll` itself."""
    from kzoo.alignment.base import PolicyModel
    from kzoo.alignment.sft import SFTModel

    arrays = encode_sft(_records(), TOK, max_length=24, template="plain")
    x, y, w = (np.asarray(t) for t in next(iter(sft_dataset(arrays, 8, shuffle=False))))
    plain = compile_sft(_model(), keras.optimizers.SGD(0.1))
    sft = SFTModel(_model())
    assert isinstance(sft, PolicyModel)
    sft.compile(optimizer=keras.optimizers.SGD(0.1))
    for a, b in zip(plain.get_weights(), sft.policy.get_weights()):
        np.testing.assert_array_equal(a, b)
    loss_plain = float(plain.train_on_batch(x, y, sample_weight=w))
    loss_sft = sft.train_on_batch(x, y, sample_weight=w, return_dict=True)["loss"]
    np.testing.assert_allclose(loss_sft, loss_plain, rtol=1e-5)
    for a, b in zip(plain.get_weights(), sft.policy.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Batches of 3 rows with different response token counts: the epoch's loss is the mean per
    # token over all of them (what response_nll reports), not the mean of batch means.
    logs = sft.evaluate(sft_dataset(arrays, 3, shuffle=False), return_dict=True, verbose=0)
    np.testing.assert_allclose(logs["loss"], response_nll(sft.policy, arrays), rtol=1e-5)


def test_sft_model_config_round_trip(tmp_path):
    from kzoo.alignment.sft import SFTModel

    sft = SFTModel(_model(), name="tuner")
    sft.compile(optimizer="adamw")
    path = tmp_path / "sft.keras"
    sft.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, SFTModel) and loaded.name == "tuner"
    for a, b in zip(sft.policy.get_weights(), loaded.policy.get_weights()):
        np.testing.assert_array_equal(a, b)
