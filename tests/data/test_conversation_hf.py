"""Conversations on a Hugging Face tokenizer folder (a BPE trained here, saved by transformers
with a ChatML template): kzoo's token ids and assistant mask equal transformers'
`apply_chat_template(..., return_assistant_tokens_mask=True)`.

What kzoo learns for an assistant turn is everything the template writes from the end of the
generation prompt to the start of the next message: with `CHATML_TURN` (a `{% generation %}`
block over content, `<|im_end|>` and the newline) the masks are equal; with `CHATML_END` (the
newline outside the block) kzoo's mask is transformers' plus the newline after each
assistant `<|im_end|>`.
"""

import numpy as np
import pytest

from kzoo.data.conversation import encode_conversation
from kzoo.data.instruction import encode_sft
from kzoo.data.preference import encode_pairs
from kzoo.tokenizers import from_hf

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CORPUS = ["hello world, the cat sat on the mat.", "What is 2+2? It is 4. Be brief.",
          "Ünïcode café — naïve façade ok?", "system user assistant\nmore lines\n"] * 30
_LOOP = ("{% for m in messages %}{{ bos_token if loop.first }}<|im_start|>{{ m['role'] }}\n"
         "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>")
_GEN = "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
CHATML_TURN = (_LOOP + "\n{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>\n"
               "{% endif %}{% endfor %}" + _GEN)
CHATML_END = (_LOOP + "{% endgeneration %}{{ '\\n' }}{% else %}{{ m['content'] }}<|im_end|>\n"
              "{% endif %}{% endfor %}" + _GEN)


def msg(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = [
    [msg("system", "Be brief."), msg("user", "What is 2+2?"), msg("assistant", "It is 4."),
     msg("user", "the cat?"), msg("assistant", "sat on the mat.")],
    [msg("user", "Ünïcode café?"), msg("assistant", " naïve façade ok")],
    [msg("user", "hello"), msg("assistant", "world\nmore lines"), msg("user", "ok?"),
     msg("assistant", "the mat"), msg("user", "and?"), msg("assistant", "It is 4.  ")],
]


def _train():
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "<pad>", "<|im_start|>", "<|im_end|>"],
        show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


@pytest.fixture(scope="module", params=["turn", "end"])
def pair(request, tmp_path_factory):
    """(kzoo tokenizer, transformers tokenizer, template name) of one saved folder."""
    path = tmp_path_factory.mktemp(f"chatml_{request.param}")
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_train(), bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    hf.chat_template = CHATML_TURN if request.param == "turn" else CHATML_END
    hf.save_pretrained(path)
    return from_hf(path), transformers.AutoTokenizer.from_pretrained(path), request.param


def _theirs(tok, messages):
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    return np.asarray(out["input_ids"]), np.asarray(out["assistant_masks"], np.float32)


def _expected_mask(ids, mask, kind, end_id):
    """transformers' mask, plus (for CHATML_END) the token after each masked <|im_end|>."""
    if kind == "turn":
        return mask
    after = np.flatnonzero((ids[:-1] == end_id) & (mask[:-1] == 1) & (mask[1:] == 0)) + 1
    out = mask.copy()
    out[after] = 1.0
    return out


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["system+2", "unicode", "3 turns"])
def test_ids_and_mask_match_transformers(pair, messages):
    ours, theirs, kind = pair
    ids, mask = encode_conversation(messages, ours)
    their_ids, their_mask = _theirs(theirs, messages)
    np.testing.assert_array_equal(ids, their_ids)
    end = ours.token_id("eos_token")
    assert ids[0] == ours.token_id("bos_token") and (ids == ours.token_id("bos_token")).sum() == 1
    expected = _expected_mask(their_ids, their_mask, kind, end)
    turns = sum(m["role"] == "assistant" for m in messages)
    assert (expected != their_mask).sum() == (turns if kind == "end" else 0)
    np.testing.assert_array_equal(mask, expected)
    # decoded, the mask selects each assistant content, its <|im_end|> and newline
    answers = "".join(m["content"] + "<|im_end|>\n" for m in messages if m["role"] == "assistant")
    assert ours.decode(ids[mask > 0]) == answers


def test_sft_rows_and_the_generation_prompt_match_transformers(pair):
    ours, theirs, kind = pair
    messages = CONVERSATIONS[0]
    out = encode_sft([{"messages": messages}, {"prompt": messages[:-1],
                                               "completion": messages[-1:]}], ours, 96)
    their_ids, their_mask = _theirs(theirs, messages)
    n = len(their_ids)
    for row in out["token_ids"]:
        np.testing.assert_array_equal(row[:n], their_ids)
        assert (row[n:] == ours.eot_id).all()
    np.testing.assert_array_equal(out["loss_mask"][0, :n],
                                  _expected_mask(their_ids, their_mask, kind, ours.eot_id))
    # prompt/completion: the prompt is what the model sees when asked to answer
    head = theirs.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True,
                                      return_dict=True)["input_ids"]
    assert out["loss_mask"][1, : len(head)].sum() == 0 and out["loss_mask"][1, len(head)] == 1
    assert ours.decode(out["token_ids"][1][out["loss_mask"][1] > 0]) == (
        "sat on the mat.<|im_end|>\n")


def test_conversational_pairs_match_transformers(pair):
    ours, theirs, kind = pair
    prompt = CONVERSATIONS[0][:4]
    record = {"prompt": prompt, "chosen": [msg("assistant", "sat on the mat.")],
              "rejected": [msg("assistant", "hello world")]}
    out = encode_pairs([record], ours, max_length=80)
    for j, key in enumerate(("chosen", "rejected")):
        their_ids, their_mask = _theirs(theirs, prompt + record[key])
        n = out["lengths"][0, j]
        np.testing.assert_array_equal(out["token_ids"][0, j, :n], their_ids)
        # the prompt's own assistant turn ("It is 4.") is context in a pair
        expected = _expected_mask(their_ids, their_mask, kind, ours.eot_id)
        first = len(theirs.apply_chat_template(prompt, add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"])
        expected[:first] = 0
        np.testing.assert_array_equal(out["loss_mask"][0, j, :n], expected)
        assert ours.decode(out["token_ids"][0, j][out["loss_mask"][0, j] > 0]) == (
            record[key][0]["content"] + "<|im_end|>\n")
