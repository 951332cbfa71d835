"""How `kzoo chat` lays a conversation out as token ids: a Jinja chat template or an SFT
prompt template, chosen from the tokenizer and the run (`choose_format`).

`JinjaFormat` renders the whole conversation with a chat template (the tokenizer's, or kzoo's
"### Instruction: / ### Response:" default); `PromptFormat` writes each turn as an SFT record
(prompt, reply, end-of-text), or, for a pre-trained model, as raw text one turn per line.
Every format has `name` (what the chat's first line calls it) and
`prompt_ids(system, turns, user)`.

Example:
```python
from kzoo.cli.chat_format import choose_format
from kzoo.tokenizers import ByteTokenizer
chat_format = choose_format(ByteTokenizer(), None, "alpaca")
ids = chat_format.prompt_ids(None, [("Hi", "Hello!")], "How are you?")  # list[int]
```
"""

from __future__ import annotations


class JinjaFormat:
    """Turns rendered with a Jinja chat template (the tokenizer's, or kzoo's default)."""

    def __init__(self, tokenizer, template: str, variables: dict, name: str):
        from kzoo.data.conversation import _text_encoder

        self.template, self.variables, self.name = template, variables, name
        self.encode = _text_encoder(tokenizer)  # the template writes the special tokens

    def prompt_ids(self, system, turns, user) -> list[int]:
        """The ids of the conversation so far plus `user`, ending with the reply's header."""
        from kzoo.tokenizers.chat_template import render_chat_template

        messages = [{"role": "system", "content": system}] if system else []
        for question, answer in turns:
            messages += [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": user})
        text = render_chat_template(self.template, messages, True, **self.variables)
        return self.encode(text).tolist()


class PromptFormat:
    """Turns rendered with an SFT prompt template: prompt, reply, end-of-text, one after
    another (exactly how `kzoo.data.instruction.encode_sft` lays out one record).

    Args:
        tokenizer: a kzoo or Hugging Face tokenizer.
        template: PromptTemplate. how a message becomes a prompt.
        name: str. what the chat's first line calls the layout.
        raw: bool. a pre-trained model's text: a reply and the next message are separated by
            a new line, not end-of-text (which a pre-trained model reads as "a new document
            starts here": the earlier turns would no longer count).
    """

    def __init__(self, tokenizer, template, name: str, raw: bool = False):
        self.tokenizer, self.template, self.name = tokenizer, template, name
        self.end = list(tokenizer.encode("\n")) if raw else [tokenizer.eot_id]

    def prompt_ids(self, system, turns, user) -> list[int]:
        encode = self.tokenizer.encode
        ids = list(encode(system + "\n\n")) if system else []
        for question, answer in turns:
            ids += [*encode(self.template.format({"instruction": question})), *encode(answer),
                    *self.end]
        return [int(i) for i in ids + list(encode(self.template.format({"instruction": user})))]


def _run_template(source) -> str | None:
    """`data.template` of a fine-tuning run's config.yaml (read as plain YAML data)."""
    from kzoo.training.config import read_yaml

    if source is None or source.kind != "run":  # None: a model given to the library directly
        return None
    path = source.path / "config.yaml"
    if not path.is_file():
        return None
    config = read_yaml(path)
    data = config.get("data") if isinstance(config, dict) else None
    template = data.get("template") if isinstance(data, dict) else None
    return template if isinstance(template, str) else None


def choose_format(tokenizer, source, template: str = "auto"):
    """How turns become ids: a `JinjaFormat` or a `PromptFormat` (see the module docstring).

    Args:
        tokenizer: a kzoo or Hugging Face tokenizer.
        source: ModelSource or None. where the model came from (a run's config.yaml is read).
        template: str. "auto", "chat", a `kzoo.data.instruction.TEMPLATES` name or a format
            string.

    Example:
    ```python
    from kzoo.tokenizers import ByteTokenizer
    choose_format(ByteTokenizer(), None, "chat").name  # "kzoo's ### Instruction / ### Response"
    choose_format(ByteTokenizer(), None).name          # "raw text: ..." (a pre-trained model)
    ```
    """
    from kzoo.data.conversation import chat_template_of
    from kzoo.data.instruction import CHAT, get_template

    own = getattr(tokenizer, "chat_template", None)
    if template == "auto":
        # No chat template and no fine-tuning template: a pre-trained model, which was never
        # shown "### Instruction:" headers; it continues raw text.
        template = CHAT if own else (_run_template(source) or "raw")
    if template == "raw":
        return PromptFormat(tokenizer, get_template("raw"),
                            "raw text: no chat template, no fine-tuning template", raw=True)
    if template == CHAT:
        text, variables = chat_template_of(tokenizer)
        name = "the tokenizer's chat template" if own else \
            "kzoo's ### Instruction / ### Response"
        return JinjaFormat(tokenizer, text, variables, name)
    try:
        return PromptFormat(tokenizer, get_template(template), f"prompt template {template!r}")
    except ValueError as error:
        raise ValueError(f"--template {template!r}: {error}") from None
