"""CausalLM computes what transformers' Qwen3 and Gemma 3 compute: random-weight models with
non-default settings (q/k norms, GQA, head_dim apart from the width, a sliding window shorter
than the prompt, mixed layer types, local vs global RoPE bases, linear rope scaling on global
layers, query_pre_attn_scalar, Gemma's (1 + w) norms, scaled embeddings, post norms), weights
copied over by a small test-local mapping, logits within 1e-4 and 64 greedy tokens identical
(well past the window).

Runs on the backend of KERAS_BACKEND (TensorFlow by default; jax and torch in a quick run).
"""

import numpy as np
import pytest

from kzoo.models import CausalLM

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WINDOW = 6
PROMPT = 12
NEW = 64
LAYERS = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]


def _randomize(model, seed):
    """Every parameter redrawn, norms included (Gemma's start at zero, Qwen3's at one), so
    each weight's place in the mapping matters."""
    gen = torch.Generator().manual_seed(seed)
    gemma = "gemma" in type(model).__name__.lower()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # norm weights
                p.copy_((0.0 if gemma else 1.0) + 0.3 * torch.randn(p.shape, generator=gen))
            else:
                # Gemma's tied head reads the sqrt(hidden)-scaled input embedding back out of
                # the residual: large embeddings make greedy decoding repeat one token.
                std = 0.02 if gemma and "embed_tokens" in name else 0.15
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model.eval()


def qwen3_reference():
    config = transformers.Qwen3Config(
        vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
        rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=True,
        sliding_window=WINDOW, layer_types=LAYERS,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
        attn_implementation="eager",
    )
    return _randomize(transformers.Qwen3ForCausalLM(config), 0)


def gemma3_reference():
    config = transformers.Gemma3TextConfig(
        vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
        rms_norm_eps=1e-6, query_pre_attn_scalar=24, sliding_window=WINDOW, layer_types=LAYERS,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0},
        },
        tie_word_embeddings=True, attn_implementation="eager",
    )
    return _randomize(transformers.Gemma3ForCausalLM(config), 1)


def qwen3_kzoo(config):
    return CausalLM(
        vocab_size=config.vocab_size, num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads, num_kv_heads=config.num_key_value_heads,
        hidden_dim=config.hidden_size, intermediate_dim=config.intermediate_size,
        head_dim=config.head_dim, max_sequence_length=config.max_position_embeddings,
        position_embedding="rope", norm="rmsnorm", activation="swiglu", use_bias=False,
        norm_epsilon=config.rms_norm_eps, tie_embeddings=False,
        rope_max_wavelength=config.rope_parameters["rope_theta"], qk_norm=True,
        sliding_window=config.sliding_window, layer_types=config.layer_types,
    )


def gemma3_kzoo(config):
    full, local = (config.rope_parameters[k] for k in ("full_attention", "sliding_attention"))
    return CausalLM(
        vocab_size=config.vocab_size, num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads, num_kv_heads=config.num_key_value_heads,
        hidden_dim=config.hidden_size, intermediate_dim=config.intermediate_size,
        head_dim=config.head_dim, max_sequence_length=config.max_position_embeddings,
        position_embedding="rope", norm="rmsnorm", activation="geglu", use_bias=False,
        norm_epsilon=config.rms_norm_eps, tie_embeddings=True,
        rope_max_wavelength=full["rope_theta"], rope_scaling_factor=full["factor"],
        local_rope_max_wavelength=local["rope_theta"], qk_norm=True, norm_scale_offset=1.0,
        embedding_scale=config.hidden_size**0.5, post_norms=True,
        sliding_window=config.sliding_window, layer_types=config.layer_types,
        attention_scale=config.query_pre_attn_scalar**-0.5,
    )


def copy_weights(reference, model):
    """The test-local mapping: transformers' (out, in) Linear weights -> kzoo's (in, out)
    kernels, q/k/v fused as [q | k | v], gate and up fused as [gate | up]."""
    sd = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    gemma = "gemma" in type(reference).__name__.lower()
    model.token_embedding.embeddings.assign(sd["model.embed_tokens.weight"])
    if not model.tie_embeddings:
        model.token_embedding.reverse_embeddings.assign(sd["lm_head.weight"].T)
    model.final_norm.scale.assign(sd["model.norm.weight"])
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        attn, ffn = block.attention, block.feedforward
        qkv = np.concatenate([sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv"], axis=0)
        attn.query_key_value.kernel.assign(qkv.T)
        attn.output_dense.kernel.assign(sd[p + "self_attn.o_proj.weight"].T)
        attn.query_norm.scale.assign(sd[p + "self_attn.q_norm.weight"])
        attn.key_norm.scale.assign(sd[p + "self_attn.k_norm.weight"])
        up = np.concatenate([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]], 0)
        ffn.up.kernel.assign(up.T)
        ffn.down.kernel.assign(sd[p + "mlp.down_proj.weight"].T)
        block.attention_norm.scale.assign(sd[p + "input_layernorm.weight"])
        if gemma:
            block.post_attention_norm.scale.assign(sd[p + "post_attention_layernorm.weight"])
            block.feedforward_norm.scale.assign(sd[p + "pre_feedforward_layernorm.weight"])
            block.post_feedforward_norm.scale.assign(sd[p + "post_feedforward_layernorm.weight"])
        else:
            block.feedforward_norm.scale.assign(sd[p + "post_attention_layernorm.weight"])
    return model


FAMILIES = {"qwen3": (qwen3_reference, qwen3_kzoo), "gemma3": (gemma3_reference, gemma3_kzoo)}
IDS = np.random.default_rng(3).integers(0, 96, size=(2, 20))


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request):
    make_reference, make_kzoo = FAMILIES[request.param]
    reference = make_reference()
    return reference, copy_weights(reference, make_kzoo(reference.config))


def hf_logits(reference, ids, attention_mask=None):
    with torch.no_grad():
        out = reference(torch.tensor(ids), attention_mask=None if attention_mask is None
                        else torch.tensor(attention_mask))
    return out.logits.float().numpy()


def test_logits_match_transformers(pair):
    reference, model = pair
    expected = hf_logits(reference, IDS)
    actual = np.asarray(model(IDS))
    assert np.abs(actual - expected).max() < 1e-4
    assert expected.std() > 0.05  # not vacuous: the logits vary


def test_window_changes_the_logits(pair):
    """Not vacuous: past the window, a full-attention copy of the model gives other logits."""
    reference, model = pair
    config = model.get_config()
    config.update(sliding_window=None)
    full = CausalLM.from_config(config)
    full.set_weights(model.get_weights())
    late = slice(WINDOW + 1, None)
    assert np.abs(np.asarray(full(IDS))[:, late] - np.asarray(model(IDS))[:, late]).max() > 1e-2


def test_left_padded_batch_matches_transformers(pair):
    """A ragged batch, left-padded, with position_ids: each row's logits are those of the row
    alone in transformers (windows count real tokens, not pads)."""
    reference, model = pair
    lengths = [20, 13]
    ids = IDS.copy()
    mask = (np.arange(20)[None, :] >= (20 - np.array(lengths))[:, None]).astype("int32")
    ids[1, :7] = 0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    ours = np.asarray(model({"token_ids": ids, "padding_mask": mask, "position_ids": positions}))
    for row, n in enumerate(lengths):
        alone = hf_logits(reference, IDS[row:row + 1, -n:] if row == 0 else ids[1:2, 20 - n:])
        assert np.abs(ours[row, 20 - n:] - alone[0]).max() < 1e-4


def test_greedy_generation_matches_transformers_past_the_window(pair):
    reference, model = pair
    prompts = IDS[:, :PROMPT]
    ours = model.generate(prompts.tolist(), max_new_tokens=NEW).token_ids
    with torch.no_grad():
        theirs = reference.generate(torch.tensor(prompts), max_new_tokens=NEW,
                                    min_new_tokens=NEW, do_sample=False, pad_token_id=0)
    assert PROMPT + NEW > 2 * WINDOW
    assert ours == theirs[:, PROMPT:].tolist()
    assert len(set(ours[0])) > 3  # not one repeated token: the comparison has content
