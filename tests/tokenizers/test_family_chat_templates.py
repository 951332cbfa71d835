"""Qwen3 and Gemma 3 tokenizer folders (made here, tests/tokenizers/family_tokenizers.py):
`kzoo.tokenizers.from_hf` reads their chat templates from `tokenizer_config.json` and renders
the same text and ids as transformers' `apply_chat_template`, thinking tags, tools and system
turns included; `kzoo chat` picks the template and builds the same prompt ids."""

import pytest

from kzoo.tokenizers import from_hf, load_tokenizer
from tests.tokenizers.family_tokenizers import write_folder

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

FAMILIES = ("qwen3", "gemma3")
CONVERSATIONS = {
    "one-turn": [{"role": "user", "content": "Speak, speak."}],
    "system-and-history": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Before we proceed any further?"},
        {"role": "assistant", "content": "<think>\nThey ask.\n</think>\n\nHear me speak."},
        {"role": "user", "content": " You are all resolved rather to die than to famish? "}],
    "ends-with-an-answer": [
        {"role": "user", "content": "First Citizen:"},
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nResolved. resolved."}],
}


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    folder = write_folder(request.param, tmp_path_factory.mktemp(request.param))
    reference = transformers.AutoTokenizer.from_pretrained(str(folder))
    return request.param, folder, from_hf(folder), reference


def _ids(encoded):
    return list(encoded if isinstance(encoded, list) else encoded["input_ids"])


@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_templates_render_like_transformers(pair, name, add_generation_prompt):
    _, _, tok, reference = pair
    messages = CONVERSATIONS[name]
    text = tok.apply_chat_template(messages, add_generation_prompt, tokenize=False)
    assert text == reference.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    assert tok.apply_chat_template(messages, add_generation_prompt) == _ids(
        reference.apply_chat_template(messages, add_generation_prompt=add_generation_prompt))


def test_the_well_known_prompts(pair):
    """The prompt text each family's model card shows (system, user, generation prompt)."""
    family, _, tok, _ = pair
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    expected = {
        "qwen3": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                 "<|im_start|>assistant\n",
        "gemma3": "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                  "<start_of_turn>model\n"}[family]
    assert tok.apply_chat_template(messages, True, tokenize=False) == expected
    # the turn markers are single tokens, and generation stops at the turn's end
    marks = {"qwen3": ("<|im_start|>", "<|im_end|>"),
             "gemma3": ("<start_of_turn>", "<end_of_turn>")}[family]
    assert all(len(tok.encode(m, add_special_tokens=False)) == 1 for m in marks)
    assert tok._tok.token_to_id(marks[1]) in tok.stop_token_ids


def test_qwen3_thinking_switch_tools_and_reasoning_content(tmp_path):
    folder = write_folder("qwen3", tmp_path)
    tok, reference = from_hf(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
    messages = CONVERSATIONS["system-and-history"]
    tools = [{"type": "function", "function": {"name": "speak", "description": "Say it.",
              "parameters": {"type": "object", "properties": {"line": {"type": "string"}}}}}]
    calls = [{"role": "user", "content": "Speak."},
             {"role": "assistant", "content": "", "reasoning_content": "call it",
              "tool_calls": [{"type": "function", "function": {
                  "name": "speak", "arguments": {"line": "All: speak"}}}]},
             {"role": "tool", "content": "spoken"}]
    for case, kwargs in [(messages, {"enable_thinking": False}), (messages, {"tools": tools}),
                         (calls, {"tools": tools})]:
        text = tok.apply_chat_template(case, True, tokenize=False, **kwargs)
        assert text == reference.apply_chat_template(case, add_generation_prompt=True,
                                                     tokenize=False, **kwargs)
    no_thinking = tok.apply_chat_template(messages, True, tokenize=False,
                                          enable_thinking=False)
    assert no_thinking.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # the history's thinking is dropped before the last question, as the model card says
    assert "They ask." not in no_thinking and "Hear me speak.<|im_end|>" in no_thinking


def test_gemma3_roles_must_alternate_in_one_line(tmp_path):
    tok = from_hf(write_folder("gemma3", tmp_path))
    with pytest.raises(ValueError, match=r"Conversation roles must alternate") as error:
        tok.apply_chat_template([{"role": "user", "content": "a"},
                                 {"role": "user", "content": "b"}], tokenize=False)
    assert "\n" not in str(error.value)


def test_kzoo_chat_uses_the_family_template(pair):
    from kzoo.cli import chat as chat_lib

    _, folder, _, reference = pair
    tokenizer = load_tokenizer(folder)
    fmt = chat_lib.choose_format(tokenizer, None)
    assert fmt.name == "the tokenizer's chat template"
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hear me speak."},
                {"role": "user", "content": "What authority surfeits on?"}]
    expected = _ids(reference.apply_chat_template(messages, add_generation_prompt=True))
    ids = fmt.prompt_ids("Be brief.", [("Hello", "Hear me speak.")],
                         "What authority surfeits on?")
    assert ids == expected
