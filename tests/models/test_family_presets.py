"""Each registered family's presets: gathered into `PRESETS` in the registry's order, the big
shapes counted against numbers nobody here wrote (keras-hub 0.32's preset metadata, from the
published checkpoints), the small ones built and run, and every family's export round trip.
"""

import numpy as np
import pytest

from kzoo.models import CausalLM, get_preset
from kzoo.models.families import family_for_model, get_family, list_families
from kzoo.models.presets import PRESETS

# keras-hub 0.32's `backbone_presets[...]["metadata"]["params"]` for the same shapes.
KERAS_HUB_PARAMS = {"qwen3_0_6b": ("qwen3", "qwen3_0.6b_en", 596_049_920),
                    "gemma3_270m": ("gemma3", "gemma3_270m", 268_098_176),
                    "gemma3_1b": ("gemma3", "gemma3_1b", 999_885_952)}


def _count(args) -> int:
    """Parameters of a RoPE preset from its arguments, without building it (1B floats)."""
    hidden, layers = args["hidden_dim"], args["num_layers"]
    head = args.get("head_dim") or hidden // args["num_heads"]
    q, kv = args["num_heads"] * head, args["num_kv_heads"] * head
    norms = 2 + 2 * bool(args.get("post_norms"))
    block = hidden * (2 * q + 2 * kv) + 3 * hidden * args["intermediate_dim"] + norms * hidden
    block += 2 * head * bool(args.get("qk_norm"))
    head_matrix = 0 if args["tie_embeddings"] else hidden * args["vocab_size"]
    return args["vocab_size"] * hidden + layers * block + hidden + head_matrix


def test_presets_come_from_the_families_in_registry_order():
    expected = [name for family in list_families() for name in family.presets]
    assert list(PRESETS) == expected
    assert {"gpt_nano", "llama_nano", "qwen3_nano", "gemma3_nano"} <= set(PRESETS)


@pytest.mark.parametrize("preset", list(KERAS_HUB_PARAMS))
def test_big_shapes_count_what_keras_hub_publishes(preset):
    family, hub_name, params = KERAS_HUB_PARAMS[preset]
    assert preset in get_family(family).presets
    assert _count(get_preset(preset)) == params, hub_name


def test_the_count_is_the_models_own():
    """The formula above is checked on the small presets, which are built."""
    for name in ("llama_nano", "qwen3_nano", "gemma3_nano"):
        assert _count(get_preset(name)) == CausalLM.from_preset(name).count_params(), name


@pytest.mark.parametrize("family", [f.name for f in list_families() if f.presets])
def test_each_familys_smallest_preset_exports_to_its_own_family(family):
    name = min(get_family(family).presets, key=lambda p: _size(get_preset(p)))
    model = CausalLM.from_preset(name, vocab_size=64, max_sequence_length=32)
    assert family_for_model(model).name == family
    logits = np.asarray(model(np.arange(12).reshape(2, 6) % 64))
    assert logits.shape == (2, 6, 64) and np.isfinite(logits).all()


def _size(args):
    return args["num_layers"] * args["hidden_dim"] * args["vocab_size"]


def test_registry_refuses_a_second_family_of_a_name_or_model_type():
    from dataclasses import replace

    from kzoo.models.families import register_family

    llama = get_family("llama")
    with pytest.raises(ValueError, match=r"family 'llama' is already registered"):
        register_family(llama)
    with pytest.raises(ValueError, match=r"model_type\(s\) \['llama'\] already belong"):
        register_family(replace(llama, name="llama_copy"))


def test_unknown_model_type_lists_the_supported_ones():
    from kzoo.models.families import family_for_model_type, supported_model_types

    with pytest.raises(ValueError) as info:
        family_for_model_type("bert", "x/config.json")
    assert str(info.value) == (f"x/config.json: model_type 'bert' is not supported; supported "
                               f"model types: {list(supported_model_types())}")
    assert {"qwen3", "gemma3_text"} <= set(supported_model_types())


@pytest.mark.parametrize("preset, changes, match", [
    ("gpt_nano", dict(sliding_window=8), r"GPT-2 has no sliding_window=8"),
    ("gemma3_nano", dict(norm_scale_offset=0.0), r"Gemma 3 needs norm_scale_offset=1.0, got "
     r"0.0"),
    ("gemma3_nano", dict(embedding_scale=2.0), r"Gemma 3 scales embeddings by sqrt"),
    ("llama_nano", dict(qk_norm=True, qkv_bias=True, attention_output_bias=False),
     r"Qwen3 has biases on all of q/k/v/o"),
    ("llama_nano", dict(qkv_bias=False, attention_output_bias=True),
     r"biased attention outputs without biased query/key/value projections"),
    ("qwen3_nano", dict(attention_scale=0.5), r"Gemma 3 needs activation='geglu', got "
     r"'swiglu'"),
])
def test_export_refuses_what_the_chosen_family_lacks(preset, changes, match):
    from kzoo.interop.hf_config import hf_config_from_kzoo

    model = CausalLM.from_preset(preset, **changes)
    with pytest.raises(ValueError, match=r"^cannot export to a transformers model: " + match):
        hf_config_from_kzoo(model)


@pytest.mark.parametrize("preset, changes, model_type", [
    ("llama_nano", dict(sliding_window=8), "mistral"),
    ("llama_nano", dict(qkv_bias=True, sliding_window=8,
                        layer_types=["full_attention", "sliding_attention"]), "qwen2"),
    ("qwen3_nano", dict(sliding_window=8), "qwen3"),
    ("gemma3_nano", {}, "gemma3_text"),
])
def test_export_picks_the_family_computing_the_model(preset, changes, model_type):
    from kzoo.interop.hf_config import hf_config_from_kzoo

    config = hf_config_from_kzoo(CausalLM.from_preset(preset, **changes))
    assert config["model_type"] == model_type
    assert config.get("sliding_window") in (8, 32, None)
