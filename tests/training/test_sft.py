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
    x, y, w = next(iter(ds))
    y_changed = np.where(np.asarray(w) > 0, np.asarray(y), (np.asarray(y) + 7) % 257)
    steps = []
    for targets in (np.asarray(y), y_changed):
        model = compile_sft(_model(), keras.optimizers.SGD(0.1))
        model.train_on_batch(x, targets, sample_weight=w)
        steps.append([v.numpy() for v in model.trainable_variables])
    for a, b in zip(*steps):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_fit_lowers_the_response_loss():
    arrays = encode_sft(_records(), TOK, max_length=24, template="plain")
    model = compile_sft(_model(), keras.optimizers.Adam(3e-3))
    before = response_nll(model, arrays)
    model.fit(sft_dataset(arrays, 8), epochs=30, verbose=0, shuffle=False)
    after = response_nll(model, arrays)
    assert after < 0.5 * before
