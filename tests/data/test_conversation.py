"""Conversational SFT and preference records rendered with kzoo's default chat template on the
byte tokenizer: the loss mask selects exactly the assistant texts and their end-of-turn text,
truncation and skipping keep their meaning, bad conversations raise one line naming the record.
"""

import json

import numpy as np
import pytest

from kzoo.data.conversation import encode_conversation, preference_conversation
from kzoo.data.instruction import encode_sft, read_instruction_records, split_records
from kzoo.data.preference import encode_pairs, read_preference_records
from kzoo.tokenizers import ByteTokenizer
from kzoo.tokenizers.base import EOT_TOKEN
from kzoo.tokenizers.chat_template import DEFAULT_CHAT_TEMPLATE, render_chat_template

TOK = ByteTokenizer()
# What kzoo's default template writes after an assistant turn's content, learned with it.
END = EOT_TOKEN + "\n\n"


def msg(role, content):
    return {"role": role, "content": content}


MULTI = [msg("system", "Be brief."), msg("user", "2+2?"), msg("assistant", "4"),
         msg("user", "And 3+3? Ünï"), msg("assistant", "6, café"), msg("user", "Thanks")]


def _write(tmp_path, name, records):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    else:
        path.write_text(json.dumps(records))
    return path


def _text(ids):
    return TOK.decode(np.asarray(ids))


def _runs(mask):
    """Number of contiguous runs of 1.0 in a mask."""
    m = np.concatenate([[0], np.asarray(mask), [0]])
    return int((np.diff(m) > 0).sum())


def test_mask_selects_every_assistant_turn_and_its_end_text():
    ids, mask = encode_conversation(MULTI, TOK)
    full = render_chat_template(DEFAULT_CHAT_TEMPLATE, MULTI, eos_token=EOT_TOKEN)
    assert _text(ids) == full  # the whole conversation, the EOT text as the EOT id
    assert (ids == TOK.eot_id).sum() == 2
    assert _text(ids[mask > 0]) == "4" + END + "6, café" + END
    assert _runs(mask) == 2 and set(mask.tolist()) == {0.0, 1.0}
    # the header and the user/system text are context
    head = render_chat_template(DEFAULT_CHAT_TEMPLATE, MULTI[:2], add_generation_prompt=True)
    assert mask[: len(head.encode())].sum() == 0 and mask[len(head.encode())] == 1


def test_read_and_encode_messages_and_prompt_completion(tmp_path):
    few_shot = [msg("user", "1+1?"), msg("assistant", "2"), msg("user", "2+2?")]
    path = _write(tmp_path, "chat.jsonl", [
        {"messages": MULTI[:3]},
        {"prompt": few_shot, "completion": [msg("assistant", "4")]},
        {"messages": [{"role": "user", "content": "x", "name": "ann"}, msg("assistant", "y")]},
    ])
    records = read_instruction_records(path)
    assert records[0] == {"messages": MULTI[:3]}
    assert records[1] == {"prompt": few_shot, "completion": [msg("assistant", "4")]}
    assert records[2]["messages"][0] == msg("user", "x")  # only role and content are kept
    out = encode_sft(records, TOK, max_length=256)
    assert out["token_ids"].shape == (3, 256) and out["skipped"] == 0
    learned = [_text(ids[mask > 0]) for ids, mask in zip(out["token_ids"], out["loss_mask"])]
    # the few-shot answer "2" in the prompt is context; only the completion is learned
    assert learned == ["4" + END, "4" + END, "y" + END]
    n = len(encode_conversation(MULTI[:3], TOK)[0])
    assert (out["token_ids"][0, n:] == TOK.eot_id).all()  # right padding with eot_id
    assert out["token_ids"][0, n - 3] == TOK.eot_id and out["loss_mask"][0, n:].sum() == 0


def test_template_chat_renders_string_records_as_a_conversation():
    records = [{"instruction": "Add.", "input": "1+1", "output": "2"},
               {"prompt": "Hi", "output": "Yo"}]
    chat = encode_sft(records, TOK, max_length=64, template="chat")
    same = encode_sft([{"messages": [msg("user", "Add.\n\n1+1"), msg("assistant", "2")]},
                       {"messages": [msg("user", "Hi"), msg("assistant", "Yo")]}],
                      TOK, max_length=64)
    np.testing.assert_array_equal(chat["token_ids"], same["token_ids"])
    np.testing.assert_array_equal(chat["loss_mask"], same["loss_mask"])
    assert _text(chat["token_ids"][1]).startswith("### Instruction:\nHi\n\n### Response:\nYo"
                                                  + END)
    # the Alpaca template still gives today's rows
    alpaca = encode_sft(records[:1], TOK, max_length=300)
    assert _text(alpaca["token_ids"][0][alpaca["loss_mask"][0] > 0]) == "2" + EOT_TOKEN


def test_truncation_skipping_and_max_prompt_length():
    convo = [msg("user", "abcdef"), msg("assistant", "0123456789")]
    ids, mask = encode_conversation(convo, TOK)
    prompt = int(np.flatnonzero(mask)[0])
    assert prompt == len("### Instruction:\nabcdef\n\n### Response:\n")
    out = encode_sft([{"messages": convo}], TOK, max_length=prompt + 3)
    np.testing.assert_array_equal(out["token_ids"][0], ids[: prompt + 3])  # cut at the end
    assert out["loss_mask"][0].tolist() == [0] * prompt + [1, 1, 1]
    # a conversation whose first assistant token does not fit is skipped, or strict raises
    records = [{"messages": convo}, {"messages": [msg("user", "a"), msg("assistant", "b")]}]
    out = encode_sft(records, TOK, max_length=prompt)
    assert out["skipped"] == 1 and len(out["token_ids"]) == 1
    with pytest.raises(ValueError, match=f"record 0: the prompt has {prompt} tokens"):
        encode_sft(records, TOK, max_length=prompt, strict=True)
    out = encode_sft([{"messages": convo}], TOK, max_length=20, max_prompt_length=5)
    assert _text(out["token_ids"][0][:18]) == "### I0123456789" + END
    assert out["loss_mask"][0].tolist() == [0] * 5 + [1] * 13 + [0] * 2


def test_prefix_inconsistent_template_is_refused():
    tok = ByteTokenizer()
    # Writes the number of messages first, so a shorter conversation never begins a longer one.
    tok.chat_template = ("{{ messages | length }}{% for m in messages %}{{ m.content }}"
                         "{% endfor %}{% if add_generation_prompt %}>{% endif %}")
    with pytest.raises(ValueError, match=r"record 0: the chat template is not prefix-consistent: "
                                         r"messages\[:1\]"):
        encode_sft([{"messages": [msg("user", "a"), msg("assistant", "b")]}], tok, 32)
    tok.chat_template = "{{ raise_exception('no system messages') }}"
    with pytest.raises(ValueError, match="record 0: chat template failed: no system messages"):
        encode_sft([{"messages": [msg("user", "a"), msg("assistant", "b")]}], tok, 32)


@pytest.mark.parametrize("record, match", [
    ({"messages": "hi"}, r"record 0: field 'messages' must be a list of messages"),
    ({"messages": ["hi"]}, r"record 0: messages\[0\] must be an object"),
    ({"messages": [{"role": "user"}]}, r"record 0: messages\[0\] has no \['content'\]"),
    ({"messages": [msg("tool", "x"), msg("assistant", "y")]},
     r"record 0: messages\[0\]: unknown role 'tool'; allowed roles: \['system', 'user', "
     r"'assistant'\]"),
    ({"messages": [msg("user", ["a"]), msg("assistant", "y")]},
     r"record 0: messages\[0\]: 'content' must be a string, got list"),
    ({"messages": [msg("system", "s"), msg("user", "u")]},
     r"record 0: the conversation has no assistant turn to learn from \(roles \['system', "
     r"'user'\]\)"),
    ({"prompt": [msg("user", "u"), msg("assistant", "a")], "completion": [msg("user", "v")]},
     r"record 0: the conversation has no assistant turn .*\['user'\]"),
    ({"messages": [msg("assistant", "hi"), msg("user", "u"), msg("assistant", "a")]},
     "record 0: the conversation opens with an assistant turn"),
    ({"messages": [msg("user", "u"), msg("assistant", " ")]}, "assistant message 1 is empty"),
    ({"prompt": [msg("user", "u")]}, r"record 0: missing field\(s\) \['completion'\]"),
    ({"prompt": [msg("user", "u")], "completion": "a"},
     "record 0: field 'completion' must be a list of messages"),
])
def test_bad_conversations_name_file_and_record(tmp_path, record, match):
    path = _write(tmp_path, "chat.json", [record])
    with pytest.raises(ValueError, match=match) as info:
        read_instruction_records(path)
    assert "chat.json" in str(info.value) and "\n" not in str(info.value)


def test_bad_conversations_in_jsonl_name_the_line(tmp_path):
    path = _write(tmp_path, "chat.jsonl", [{"messages": MULTI[:3]}, {"messages": {"a": 1}}])
    with pytest.raises(ValueError, match=r"chat.jsonl line 2: field 'messages' must be a list"):
        read_instruction_records(path)


def test_split_keys_conversations_on_everything_before_the_last_assistant_turn():
    sft = [{"messages": [msg("user", f"q{i}"), msg("assistant", f"a{i}")]} for i in range(300)]
    pairs = [{"prompt": [msg("user", f"q{i}")], "chosen": [msg("assistant", "x")],
              "rejected": [msg("assistant", "y")]} for i in range(300)]
    sft_train, sft_val = split_records(sft, 0.2, seed=3)
    pref_train, pref_val = split_records(pairs, 0.2, seed=3)
    user = lambda r: (r.get("messages") or r["prompt"])[0]["content"]  # noqa: E731
    assert 30 < len(sft_val) < 90
    assert [user(r) for r in sft_val] == [user(r) for r in pref_val]
    # the same prompt with another answer, or as prompt/completion, lands on the same side
    again = [{"prompt": r["messages"][:1], "completion": [msg("assistant", "z")]}
             for r in sft]
    assert [user(r) for r in split_records(again, 0.2, seed=3)[1]] == [user(r) for r in sft_val]
    # a multi-turn conversation keys on its earlier turns too
    longer = [{"messages": r["messages"] + [msg("user", "more"), msg("assistant", "b")]}
              for r in sft]
    assert {user(r) for r in split_records(longer, 0.2, seed=3)[1]} != {user(r) for r in sft_val}
    assert split_records(sft, 0.2, seed=4)[1] != sft_val


def test_conversational_preference_pairs(tmp_path):
    prompt = [msg("system", "Be kind."), msg("user", "Greet me.")]
    explicit = {"prompt": prompt, "chosen": [msg("assistant", "Hello!")],
                "rejected": [msg("assistant", "Go away.")]}
    implicit = {"chosen": prompt + explicit["chosen"], "rejected": prompt + explicit["rejected"]}
    same = prompt + [msg("assistant", "Same")]
    blank = {"prompt": prompt, "chosen": [msg("assistant", "  ")],
             "rejected": [msg("assistant", "no")]}
    path = _write(tmp_path, "pairs.jsonl",
                  [explicit, implicit, {"chosen": same, "rejected": same}, blank])
    records, counts = read_preference_records(path)
    assert counts == {"read": 4, "kept": 2, "identical": 1, "empty": 1}
    assert records[0] == records[1] == explicit
    out = encode_pairs(records, TOK, max_length=128)
    np.testing.assert_array_equal(out["token_ids"][0], out["token_ids"][1])
    head = render_chat_template(DEFAULT_CHAT_TEMPLATE, prompt, add_generation_prompt=True)
    for j, answer in enumerate(["Hello!", "Go away."]):
        ids, mask = out["token_ids"][0, j], out["loss_mask"][0, j]
        assert _text(ids[: out["lengths"][0, j]]) == head + answer + END
        assert _text(ids[mask > 0]) == answer + END
    # string pairs under template="chat" encode as the conversational form
    strings = [{"instruction": "Greet me.", "input": "", "chosen": "Hello!", "rejected": "No."}]
    chat = encode_pairs(strings, TOK, 128, template="chat")
    conv = encode_pairs([{"prompt": [msg("user", "Greet me.")], "chosen": [msg("assistant",
                         "Hello!")], "rejected": [msg("assistant", "No.")]}], TOK, 128)
    for key in ("token_ids", "loss_mask", "lengths"):
        np.testing.assert_array_equal(chat[key], conv[key])
    with pytest.raises(ValueError, match=r"pairs.jsonl line 3: the pair has chosen == rejected"):
        read_preference_records(path, strict=True)


def test_conversational_pairs_truncate_and_skip_like_string_pairs():
    pair = {"prompt": [msg("user", "abcdef")], "chosen": [msg("assistant", "0123456789")],
            "rejected": [msg("assistant", "xy")]}
    head = len("### Instruction:\nabcdef\n\n### Response:\n")
    out = encode_pairs([pair, pair], TOK, max_length=head + 2)
    assert _text(out["token_ids"][0, 0]).endswith("Response:\n01")
    assert out["loss_mask"][0, 0].tolist() == [0] * head + [1, 1]
    out = encode_pairs([pair], TOK, max_length=head)
    assert out["skipped"] == 1 and out["token_ids"].shape == (0, 2, head)
    with pytest.raises(ValueError, match=f"pair 0: the prompt has {head} tokens"):
        encode_pairs([pair], TOK, max_length=head, strict=True)


def test_implicit_prompt_is_the_longest_common_message_prefix():
    a, b = msg("assistant", "4"), msg("assistant", "5")
    convo = [msg("user", "2+2?"), a, msg("user", "sure?")]
    split = preference_conversation("r", {"chosen": convo + [a], "rejected": convo + [b]})
    assert split == {"prompt": convo, "chosen": [a], "rejected": [b]}
    # identical conversations keep their last message as the response (then counted identical)
    split = preference_conversation("r", {"chosen": convo + [a], "rejected": convo + [a]})
    assert split["chosen"] == split["rejected"] == [a]


@pytest.mark.parametrize("record, match", [
    ({"prompt": [msg("user", "u")], "chosen": "yes", "rejected": [msg("assistant", "n")]},
     r"record 0: field 'chosen' must be a list of messages"),
    ({"prompt": [msg("user", "u")], "chosen": [msg("assistant", "y")]},
     r"record 0: missing field\(s\) \['rejected'\]"),
    ({"prompt": [msg("bot", "u")], "chosen": [msg("assistant", "y")],
      "rejected": [msg("assistant", "n")]}, r"record 0: prompt\[0\]: unknown role 'bot'"),
    ({"chosen": [msg("assistant", "y")], "rejected": [msg("assistant", "n")]},
     "record 0: the conversation opens with an assistant turn"),
])
def test_bad_conversational_pairs_name_the_record(tmp_path, record, match):
    path = _write(tmp_path, "pairs.json", [record])
    with pytest.raises(ValueError, match=match) as info:
        read_preference_records(path)
    assert "pairs.json" in str(info.value)


def test_shared_files_load_and_render_with_the_chat_template(instruction_data_path,
                                                            preference_data_path):
    records = read_instruction_records(instruction_data_path)
    out = encode_sft(records[:50], TOK, max_length=1024, template="chat")
    assert out["skipped"] == 0 and out["token_ids"].shape == (50, 1024)
    for record, ids, mask in zip(records, out["token_ids"], out["loss_mask"]):
        assert _text(ids[mask > 0]) == record["output"] + END
    pairs, counts = read_preference_records(preference_data_path)
    assert counts["kept"] == 1094
    arrays = encode_pairs(pairs[:20], TOK, max_length=1024, template="chat")
    for pair, ids, mask in zip(pairs, arrays["token_ids"], arrays["loss_mask"]):
        assert _text(ids[1][mask[1] > 0]) == pair["rejected"] + END
