"""Hugging Face tokenizer folders: kzoo encodes, decodes and renders chat templates exactly as
transformers does, saves folders transformers reads, and its template sandbox refuses
templates that reach for Python internals."""

import json

import numpy as np
import pytest

from kzoo.models import CausalLM
from kzoo.tokenizers import BPETokenizer, from_hf, load_tokenizer
from kzoo.tokenizers.base import TokenizerFileError
from kzoo.tokenizers.chat_template import DEFAULT_CHAT_TEMPLATE

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CORPUS = ["hello world, the cat sat on the mat.", "Ünïcode café — naïve façade ok?",
          "def f(x):\n    return x  # code", "numbers 12345 and   spaces"] * 30
TEXTS = ["hello world", "  leading and trailing  ", "Ünïcode café", "<|im_start|>user\nhi"
         "<|im_end|>", "</s> in the middle </s>", "", "tabs\tand\nnewlines"]
CHATML = (
    "{% for message in messages %}{{ bos_token if loop.first }}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] | trim }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Loop controls, namespaces, tojson, raise_exception and a {% generation %} block.
FANCY = (
    "{% set ns = namespace(system='') %}"
    "{% for m in messages %}{% if m.role == 'system' %}{% set ns.system = m.content %}"
    "{% continue %}{% endif %}{% if m.role not in ['user', 'assistant'] %}"
    "{{ raise_exception('bad role ' + m.role) }}{% endif %}"
    "[{{ m.role | upper }}{{ '|' + ns.system if ns.system }}] "
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{{ eos_token }}"
    "{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n"
    "{% endfor %}{{ messages | tojson }}{% if tools %}{{ tools | tojson(indent=1) }}{% endif %}"
    "{% if add_generation_prompt %}[ASSISTANT] {% endif %}")
MESSAGES = [{"role": "system", "content": "Be brief. ✓"},
            {"role": "user", "content": " What is 2+2? "},
            {"role": "assistant", "content": "4", "tool_calls": None},
            {"role": "user", "content": "And Ünï?"}]


def _train():
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 0)])
    return tok


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tokenizer trained here, saved through transformers (5.x layout: chat_template.jinja,
    extra_special_tokens), plus a generation_config with two end tokens."""
    path = tmp_path_factory.mktemp("tok")
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_train(), bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    hf.chat_template = CHATML
    hf.save_pretrained(path)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 404]}))
    return path


@pytest.fixture(scope="module")
def pair(folder):
    return from_hf(folder), transformers.AutoTokenizer.from_pretrained(folder)


def test_encode_and_decode_match_transformers(pair):
    ours, theirs = pair
    assert ours.vocab_size == len(theirs)
    for text in TEXTS:
        for special in (True, False):
            ids = ours.encode(text, add_special_tokens=special)
            assert ids.dtype == np.int32
            assert ids.tolist() == theirs.encode(text, add_special_tokens=special), text
            for skip in (False, True):
                assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(
                    ids.tolist(), skip_special_tokens=skip)
        assert ours.decode(ours.encode(text, add_special_tokens=False)) == text


def test_end_tokens_come_from_the_tokenizer_and_generation_config(pair):
    ours, theirs = pair
    assert ours.eot_id == theirs.eos_token_id == 1
    assert ours.eos_token_ids == [1, 404]  # generation_config's, in order, each once
    assert ours.bos_token_id == 0 and ours.pad_token_id == 2
    assert ours.stop_token_ids == [1, 404]  # what generation stops at


def test_generation_stops_at_any_of_the_models_end_tokens(pair):
    from kzoo.models import CausalLM
    from kzoo.tokenizers import ByteTokenizer

    ours, _ = pair
    assert ByteTokenizer().stop_token_ids == [ByteTokenizer().eot_id]
    rows = max(ours.vocab_size, *ours.stop_token_ids) + 1  # room for every end id
    model = CausalLM.from_preset("gpt_nano", vocab_size=rows, max_sequence_length=32)
    free = model.generate([[5, 6, 7]], max_new_tokens=8, stop_token_ids=[]).token_ids[0]
    # Make the fourth greedy token an end token of the folder: generation stops before it.
    ours.eos_token_ids.append(int(free[3]))
    try:
        out = model.generate([[5, 6, 7]], max_new_tokens=8, stop_token_ids=ours.stop_token_ids)
    finally:
        ours.eos_token_ids.pop()
    first = next(i for i, t in enumerate(free) if t in [*ours.stop_token_ids, free[3]])
    assert out.token_ids[0] == free[:first] and out.finish_reasons == ["stop"]


@pytest.mark.parametrize("template", [None, FANCY, DEFAULT_CHAT_TEMPLATE],
                         ids=["folder-chatml", "fancy", "kzoo-default"])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_renders_exactly_like_transformers(pair, template, add_generation_prompt):
    ours, theirs = pair
    messages = MESSAGES if template != DEFAULT_CHAT_TEMPLATE else MESSAGES[1:]
    kwargs = dict(add_generation_prompt=add_generation_prompt, chat_template=template)
    text = ours.apply_chat_template(messages, tokenize=False, **kwargs)
    assert text == theirs.apply_chat_template(messages, tokenize=False, **kwargs)
    ids = ours.apply_chat_template(messages, **kwargs)
    assert ids == theirs.apply_chat_template(messages, return_dict=False, **kwargs)


def test_tools_reach_the_template(pair):
    ours, theirs = pair
    tools = [{"type": "function", "function": {"name": "add", "description": "2 + 2 ✓"}}]
    kwargs = dict(tools=tools, chat_template=FANCY, tokenize=False)
    assert ours.apply_chat_template(MESSAGES, **kwargs) == theirs.apply_chat_template(
        MESSAGES, **kwargs)


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__ }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ raise_exception.__globals__ }}",
    "{% set ns = namespace() %}{% set ns._secret = 1 %}",
    "{{ messages.append(1) }}",
])
def test_templates_reaching_python_internals_are_refused(pair, template):
    ours, _ = pair
    with pytest.raises(ValueError, match="refused by the sandbox") as info:
        ours.apply_chat_template(MESSAGES, chat_template=template, tokenize=False)
    assert "\n" not in str(info.value)


def test_template_errors_are_one_line(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match=r"chat template failed: bad role tool"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}], chat_template=FANCY)
    with pytest.raises(ValueError, match=r"not valid Jinja \(line 1\)"):
        ours.apply_chat_template(MESSAGES, chat_template="{% if %}")


def test_save_writes_a_folder_transformers_and_kzoo_read(pair, tmp_path):
    ours, theirs = pair
    ours.save(tmp_path)
    again = transformers.AutoTokenizer.from_pretrained(tmp_path)
    reloaded = load_tokenizer(tmp_path)  # the kzoo loader recognizes the HF layout
    for text in TEXTS:
        assert again.encode(text) == theirs.encode(text) == reloaded.encode(text).tolist()
    assert again.apply_chat_template(MESSAGES, tokenize=False) == theirs.apply_chat_template(
        MESSAGES, tokenize=False)
    assert reloaded.eos_token_ids == [1, 404]


def test_post_processor_decides_added_tokens_as_in_transformers(folder, tmp_path):
    """transformers 5 keeps tokenizer.json's post-processor over `add_bos_token`/
    `add_eos_token` switches for these files; kzoo does the same."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(add_bos_token=False, add_eos_token=True)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours, theirs = from_hf(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert ours.encode("hello world").tolist() == theirs.encode("hello world")
    assert ours.encode("hello world").tolist()[0] == 0  # the post-processor's BOS


def test_older_tokenizer_config_layout(folder, tmp_path):
    """transformers 4.x kept the template and AddedToken dicts inside tokenizer_config.json."""
    (tmp_path / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML,
              "bos_token": {"content": "<s>", "__type": "AddedToken"},
              "eos_token": {"content": "</s>", "__type": "AddedToken"},
              "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours = from_hf(tmp_path)
    text = ours.apply_chat_template(MESSAGES[1:2], tokenize=False)
    assert text == "<s><|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    assert ours.eot_id == 1


def test_missing_tokenizer_json_is_named(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(TokenizerFileError, match=r"tokenizer.json is missing; it has "
                       r"\['tokenizer.model'\]"):
        from_hf(tmp_path)


def test_no_chat_template_says_what_to_do(tmp_path):
    tok = BPETokenizer.train(CORPUS, vocab_size=300)
    tok._tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="has no chat template; pass chat_template="):
        from_hf(tmp_path).apply_chat_template(MESSAGES)


def test_kzoo_model_and_bpe_tokenizer_export_as_a_chat_model(tmp_path):
    """`save_hf(tokenizer=BPETokenizer)` writes kzoo's default chat template: transformers
    renders it and ends each answer with kzoo's end-of-text token."""
    tok = BPETokenizer.train(CORPUS, vocab_size=300)
    model = CausalLM.from_preset("gpt_nano", vocab_size=tok.vocab_size, max_sequence_length=64)
    model.save_hf(tmp_path, tokenizer=tok)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = from_hf(tmp_path)
    text = theirs.apply_chat_template(MESSAGES[1:3], tokenize=False, add_generation_prompt=True)
    assert text == ("### Instruction:\n What is 2+2? \n\n### Response:\n4<|endoftext|>\n\n"
                    "### Response:\n")
    assert ours.apply_chat_template(MESSAGES[1:3], tokenize=False,
                                    add_generation_prompt=True) == text
    assert ours.eos_token_ids == [tok.eot_id]
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tok.eot_id
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert hf_model.config.eos_token_id == tok.eot_id
