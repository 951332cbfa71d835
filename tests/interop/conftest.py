"""Tiny transformers checkpoints made here (no network): random, non-default weights.

Every model gets its norm gains and biases moved away from 1 and 0, so a weight loaded into the
wrong place, or not at all, shows in the logits.
"""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 96
torch.set_num_threads(1)  # the machines are shared; tiny models gain nothing from threads


def perturb(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name or ".ln_" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval()


_ROPE_MODEL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                   rms_norm_eps=1e-5)
# A tiny transformers config per Hugging Face model_type the registry reads
# (`test_every_registered_model_type_has_a_tiny_config` keeps this in step with it).
SMALL = {
    "gpt2": dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=80,
                 activation_function="gelu_new", layer_norm_epsilon=1e-4),
    "llama": _ROPE_MODEL, "mistral": _ROPE_MODEL, "qwen2": _ROPE_MODEL,
    "qwen3": dict(_ROPE_MODEL, head_dim=8),
    "gemma3_text": dict(_ROPE_MODEL, head_dim=8, query_pre_attn_scalar=8, sliding_window=64,
                        layer_types=["sliding_attention", "full_attention"]),
}


def small_config(model_type, **overrides):
    """A tiny config of `model_type` with no end tokens (so generation runs its full length)."""
    tokens = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return transformers.AutoConfig.for_model(model_type,
                                             **{**SMALL[model_type], **tokens, **overrides})


def make_checkpoint(folder, model_type, dtype=None, seed=0, save_kwargs=None, **overrides):
    """Save a random transformers model of `model_type` to `folder`; return the float32 model
    (the reference: a bf16 folder is compared against its own weights upcast, as transformers
    loads them)."""
    torch.manual_seed(seed)
    config = small_config(model_type, **overrides)
    model = perturb(transformers.AutoModelForCausalLM.from_config(config), seed)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder, **(save_kwargs or {}))
    if dtype is not None:
        # transformers' own float32 reading of the folder: upcasting the model in place would
        # keep buffers rounded to `dtype` (Gemma's sqrt(hidden) embedding scale)
        return transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32).eval()
    return model.float().eval()


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids))).logits.float().numpy()


def edit_json(path, **changes):
    """Rewrite a JSON file with keys changed (a value of `...` deletes the key)."""
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Session-made folders `gpt2` and `llama`; tests copy them before damaging them."""
    root = tmp_path_factory.mktemp("checkpoints")
    made = {}
    for kind in ("gpt2", "llama"):
        make_checkpoint(root / kind, kind)
        made[kind] = root / kind
    make_checkpoint(root / "sharded", "llama", save_kwargs={"max_shard_size": "20KB"})
    made["sharded"] = root / "sharded"
    return made


@pytest.fixture
def copy_of(checkpoints, tmp_path):
    def copy(kind):
        target = tmp_path / kind
        shutil.copytree(checkpoints[kind], target)
        return target

    return copy


@pytest.fixture
def helpers():
    """The module's helpers, for test files (conftest modules are not importable by name)."""
    import types

    return types.SimpleNamespace(perturb=perturb, small_config=small_config, SMALL=SMALL,
                                 make_checkpoint=make_checkpoint, hf_logits=hf_logits,
                                 edit_json=edit_json, VOCAB=VOCAB)
