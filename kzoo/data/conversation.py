"""Conversations (lists of chat messages) for SFT and preference tuning, loss on assistant text.

Accepted forms (TRL's conversational ones), messages `{"role": ..., "content": str}` with roles
`system`, `user`, `assistant`:

- SFT: `{"messages": [...]}` (every assistant turn is learned) or `{"prompt": [...],
  "completion": [...]}` (the assistant turns of the completion are learned).
- Preference: `{"prompt": [...], "chosen": [...], "rejected": [...]}`, or `{"chosen": [...],
  "rejected": [...]}` whose longest common message prefix is the prompt.

A conversation is rendered with the tokenizer's chat template (`chat_template`, else kzoo's
`DEFAULT_CHAT_TEMPLATE`). The span of an assistant turn is found by rendering prefixes: the text
of `messages[:i]` with the generation prompt must begin the text of `messages[:i + 1]`; what
follows is turn i's span: its content and whatever the template writes after it up to the next
message (the end-of-turn token and separator, e.g. `"4<|im_end|>\\n"` in ChatML), as TRL's
completion mask counts it. The header (`<|im_start|>assistant\\n`), system and user text are
never learned. The pieces are tokenized one after another without added special tokens (the
template writes its own BOS), so the prompt tokens are exactly what the model sees when asked
to generate, and a span maps to whole tokens. When every piece boundary is also a pre-token
boundary (a special token, a newline before the content), the ids equal transformers'
`apply_chat_template` ids, and the mask equals its `return_assistant_tokens_mask` for a
template whose `{% generation %}` block covers the same span (`tests/data/test_conversation.py`).

Example:
```python
from kzoo.data.conversation import encode_conversation
from kzoo.tokenizers import ByteTokenizer
messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
ids, mask = encode_conversation(messages, ByteTokenizer())
bytes(ids[mask > 0][:2].tolist())   # b'Yo', then the end-of-text id and "\\n\\n"
```
"""

from __future__ import annotations

import inspect
import json

import numpy as np

from kzoo.tokenizers.base import EOT_TOKEN
from kzoo.tokenizers.chat_template import DEFAULT_CHAT_TEMPLATE, render_chat_template

ROLES = ("system", "user", "assistant")


def is_conversational(record) -> bool:
    """Whether `record` is in a conversational form (a `messages` field, or a list of messages
    for `prompt`, `completion`, `chosen` or `rejected`).

    Example:
    ```python
    from kzoo.data.conversation import is_conversational
    is_conversational({"messages": []}), is_conversational({"prompt": "Hi", "completion": "Yo"})
    ```
    """
    if not isinstance(record, dict):
        return False
    return "messages" in record or any(
        isinstance(record.get(k), list) for k in ("prompt", "completion", "chosen", "rejected"))


def check_messages(where: str, messages, key: str = "messages") -> list[dict]:
    """A checked copy of `messages` holding only `role` and `content` of each message.

    Args:
        where: str. the record's location, named in errors ("data.json record 3").
        messages: list[dict]. the messages as read.
        key: str. the record field they came from, named in errors.

    Raises:
        ValueError: one line naming `where` and the message: not a list, a message that is not
            an object or lacks role/content, an unknown role, content that is not a string.

    Example:
    ```python
    from kzoo.data.conversation import check_messages
    check_messages("a.json record 0", [{"role": "user", "content": "Hi", "name": "x"}])
    ```
    """
    if not isinstance(messages, list):
        raise ValueError(f"{where}: field {key!r} must be a list of messages "
                         f"{{'role', 'content'}}, got {type(messages).__name__}")
    out = []
    for j, message in enumerate(messages):
        at = f"{where}: {key}[{j}]"
        if not isinstance(message, dict):
            raise ValueError(f"{at} must be an object with 'role' and 'content', got "
                             f"{type(message).__name__}")
        missing = [k for k in ("role", "content") if k not in message]
        if missing:
            raise ValueError(f"{at} has no {missing}; has {sorted(message)}")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(f"{at}: unknown role {role!r}; allowed roles: {list(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"{at}: 'content' must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def check_trainable(where: str, messages: list[dict], start: int = 0) -> None:
    """Raise unless `messages[start:]` has an assistant turn, every such turn has content, and
    the conversation does not open with an assistant turn (nothing to predict it from).

    Example:
    ```python
    from kzoo.data.conversation import check_trainable
    check_trainable("record 0", [{"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Yo"}])
    ```
    """
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= start]
    if not turns:
        roles = [m["role"] for m in messages[start:]]
        raise ValueError(f"{where}: the conversation has no assistant turn to learn from "
                         f"(roles {roles})")
    if messages[0]["role"] == "assistant":
        raise ValueError(f"{where}: the conversation opens with an assistant turn; put a "
                         "system or user message first")
    for i in turns:
        if not messages[i]["content"].strip():
            raise ValueError(f"{where}: assistant message {i} is empty")


def sft_conversation(where: str, record: dict) -> tuple[list[dict], int]:
    """The messages of an SFT conversation record and the index its learned part starts at.

    `{"messages": m}` gives `(m, 0)`; `{"prompt": p, "completion": c}` gives `(p + c, len(p))`.

    Example:
    ```python
    from kzoo.data.conversation import sft_conversation
    sft_conversation("record 0", {"prompt": [{"role": "user", "content": "Hi"}],
                                  "completion": [{"role": "assistant", "content": "Yo"}]})
    ```
    """
    if "messages" in record:
        messages, start = check_messages(where, record["messages"]), 0
    else:
        missing = [k for k in ("prompt", "completion") if k not in record]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}; has {sorted(record)}")
        prompt = check_messages(where, record["prompt"], "prompt")
        messages, start = prompt + check_messages(where, record["completion"], "completion"), \
            len(prompt)
    check_trainable(where, messages, start)
    return messages, start


def preference_conversation(where: str, record: dict) -> dict:
    """`{"prompt", "chosen", "rejected"}` message lists of a conversational preference record.

    Without a `prompt` field, the longest common message prefix of `chosen` and `rejected` is
    the prompt (at most all but their last message, as TRL's `extract_prompt`).

    Example:
    ```python
    from kzoo.data.conversation import preference_conversation
    user = {"role": "user", "content": "2+2?"}
    preference_conversation("record 0", {
        "chosen": [user, {"role": "assistant", "content": "4"}],
        "rejected": [user, {"role": "assistant", "content": "5"}]})["prompt"]   # [user]
    ```
    """
    missing = [k for k in ("chosen", "rejected") if k not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; has {sorted(record)}")
    chosen = check_messages(where, record["chosen"], "chosen")
    rejected = check_messages(where, record["rejected"], "rejected")
    if "prompt" in record:
        prompt = check_messages(where, record["prompt"], "prompt")
    else:
        n, most = 0, min(len(chosen), len(rejected)) - 1
        while n < most and chosen[n] == rejected[n]:
            n += 1
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    if (prompt + chosen)[:1] and (prompt + chosen)[0]["role"] == "assistant":
        raise ValueError(f"{where}: the conversation opens with an assistant turn; put a "
                         "system or user message first")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def has_response(messages: list[dict]) -> bool:
    """Whether a response (a list of messages) has an assistant turn with non-blank content.

    Example:
    ```python
    from kzoo.data.conversation import has_response
    has_response([{"role": "assistant", "content": " "}])   # False: counted as empty
    ```
    """
    return any(m["role"] == "assistant" and m["content"].strip() for m in messages)


def prompt_key(record: dict) -> str | None:
    """The messages before a conversation's last assistant turn, as canonical JSON (None for a
    string record): the same prompt keys alike in an SFT and a preference file.

    Example:
    ```python
    from kzoo.data.conversation import prompt_key
    prompt_key({"messages": [{"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "Yo"}]})
    # '[{"content":"Hi","role":"user"}]'
    ```
    """
    if "messages" in record:
        messages = record["messages"]
    elif isinstance(record.get("prompt"), list):
        messages = record["prompt"] + record.get("completion", record.get("chosen", []))
    else:
        return None
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"),
               default=len(messages))
    return json.dumps(messages[:last], sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"))


def _text_encoder(tokenizer):
    """Text -> int32 ids, without the special tokens `encode` would add (the template writes
    them). kzoo's own tokenizers read the end-of-text token only as an id, so the rendered text
    is split on it."""
    if getattr(tokenizer, "special_tokens", None) is not None:
        if "add_special_tokens" in inspect.signature(tokenizer.encode).parameters:
            return lambda text: np.asarray(tokenizer.encode(text, add_special_tokens=False),
                                           np.int32)
        return lambda text: np.asarray(tokenizer.encode(text), np.int32)
    eot = np.array([tokenizer.eot_id], np.int32)

    def encode(text):
        pieces = []
        for k, part in enumerate(text.split(EOT_TOKEN)):
            if k:
                pieces.append(eot)
            if part:
                pieces.append(np.asarray(tokenizer.encode(part), np.int32))
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)

    return encode


def chat_template_of(tokenizer) -> tuple[str, dict]:
    """The tokenizer's chat template (kzoo's `DEFAULT_CHAT_TEMPLATE` when it has none) and the
    special-token variables it is rendered with.

    Example:
    ```python
    from kzoo.data.conversation import chat_template_of
    from kzoo.tokenizers import ByteTokenizer
    template, variables = chat_template_of(ByteTokenizer())   # {'eos_token': '<|endoftext|>'}
    ```
    """
    template = getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
    variables = getattr(tokenizer, "special_tokens", None)
    return template, dict(variables) if variables is not None else {"eos_token": EOT_TOKEN}


def encode_conversation(messages: list[dict], tokenizer, start: int = 0, where: str = "record"):
    """Render and tokenize a conversation; mask its assistant spans from message `start` on.

    Args:
        messages: list[dict]. checked messages (`check_messages`).
        tokenizer: a kzoo or Hugging Face tokenizer (`encode`, `eot_id`, maybe `chat_template`
            and `special_tokens`).
        start: int. assistant turns before this index are context, not learned.
        where: str. the record, named in errors.

    Returns:
        `(token_ids, loss_mask)`: int32 (T,) and float32 (T,), 1.0 on learned assistant spans.

    Raises:
        ValueError: one line naming `where` when the template fails or is not
            prefix-consistent.

    Example:
    ```python
    from kzoo.data.conversation import encode_conversation
    from kzoo.tokenizers import ByteTokenizer
    ids, mask = encode_conversation([{"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "Yo"}], ByteTokenizer())
    ```
    """
    template, variables = chat_template_of(tokenizer)
    encode = _text_encoder(tokenizer)

    def render(part, generation_prompt):
        try:
            return render_chat_template(template, part, generation_prompt, **variables)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None

    full = render(messages, False)
    pieces, pos = [], 0  # (text, learned) in order; they concatenate to `full`
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < start:
            continue
        head, turn = render(messages[:i], True), render(messages[: i + 1], False)
        if not (turn.startswith(head) and full.startswith(turn) and len(head) >= pos):
            raise ValueError(
                f"{where}: the chat template is not prefix-consistent: messages[:{i}] rendered "
                f"with add_generation_prompt=True does not begin messages[:{i + 1}] rendered "
                "(kzoo finds each assistant span by rendering prefixes)")
        pieces += [(full[pos:len(head)], False), (full[len(head):len(turn)], True)]
        pos = len(turn)
    pieces.append((full[pos:], False))
    ids, mask = [np.zeros(0, np.int32)], [np.zeros(0, np.float32)]
    for text, learned in pieces:
        if text:
            piece = encode(text)
            ids.append(piece)
            mask.append(np.full(len(piece), float(learned), np.float32))
    return np.concatenate(ids).astype(np.int32), np.concatenate(mask)


def fit_sequence(token_ids: np.ndarray, loss_mask: np.ndarray, max_length: int,
                 max_prompt_length: int | None = None):
    """Cut an encoded conversation to `max_length`; None when its first learned token does not
    fit (or nothing precedes it).

    The prompt (the tokens before the first learned one) keeps its start, at most
    `max_prompt_length` tokens; the rest is cut at the end.

    Returns:
        `(token_ids, loss_mask, prompt_length)` or `(None, None, prompt_length)`.

    Example:
    ```python
    import numpy as np
    from kzoo.data.conversation import fit_sequence
    fit_sequence(np.arange(6), np.array([0, 0, 1, 1, 0, 1.0]), max_length=4)
    ```
    """
    learned = np.flatnonzero(loss_mask > 0)
    first = int(learned[0]) if len(learned) else len(token_ids)
    prompt_ids, prompt_mask = token_ids[:first], loss_mask[:first]
    if max_prompt_length is not None:
        prompt_ids, prompt_mask = prompt_ids[:max_prompt_length], prompt_mask[:max_prompt_length]
    room = max_length - len(prompt_ids)
    if room < 1 or len(prompt_ids) == 0 or not len(learned):
        return None, None, first
    ids = np.concatenate([prompt_ids, token_ids[first:][:room]]).astype(np.int32)
    mask = np.concatenate([prompt_mask, loss_mask[first:][:room]]).astype(np.float32)
    return ids, mask, first
