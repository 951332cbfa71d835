"""The draft flags of `kzoo generate` (--prompt-lookup, --draft-model, --draft-tokens) and
`kzoo chat`: the same greedy text as without them, and one-line refusals with exit code 2."""

import io

import keras
import pytest

from kzoo.cli import chat as chat_lib
from kzoo.models import CausalLM
from kzoo.recipes import generate as recipe
from kzoo.tokenizers import ByteTokenizer


def _save(root, vocab_size, seed):
    keras.utils.set_random_seed(seed)
    CausalLM.from_preset("gpt_nano", vocab_size=vocab_size, max_sequence_length=64).save(
        root / "model.keras")
    ByteTokenizer().save(root / "tokenizer")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("speculative")
    made = {}
    for name, vocab, seed in (("target", 257, 0), ("draft", 257, 1), ("other", 300, 2)):
        (root / name).mkdir()
        made[name] = _save(root / name, vocab, seed)
    return made


def _generate(runs, *flags):
    argv = [str(runs["target"]), "--prompt", "abcabcab", "--sampler", "greedy",
            "--max-new-tokens", "12", "--no-stop-at-eot", *flags]
    out = io.StringIO()
    return recipe.run(recipe.resolve_options(recipe.parse_args(argv)), out=out)["text"]


def test_generate_flags_give_the_same_greedy_text(runs):
    plain = _generate(runs)
    assert _generate(runs, "--prompt-lookup", "3") == plain
    assert _generate(runs, "--draft-model", str(runs["draft"]), "--draft-tokens", "2") == plain


@pytest.mark.parametrize("flags, message", [
    (["--prompt-lookup", "0"], "--prompt-lookup"),
    (["--draft-tokens", "0", "--draft-model", "DRAFT"], "--draft-tokens"),
    (["--prompt-lookup", "2", "--draft-model", "DRAFT"], "do not combine: choose one"),
    (["--prompt-lookup", "2", "--sampler", "beam"], "Beam search does not combine"),
    (["--draft-model", "OTHER"], "vocab_size=300) differs from the target model's "
                                 "(vocab_size=257)"),
    (["--draft-model", "/nonexistent/draft"], "--draft-model"),
])
def test_generate_refuses_bad_draft_options_in_one_line(runs, flags, message, capsys):
    names = {"DRAFT": str(runs["draft"]), "OTHER": str(runs["other"])}
    argv = [str(runs["target"]), "--prompt", "ab", *[names.get(f, f) for f in flags]]
    assert recipe.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_chat_with_drafts_replies_as_without(runs):
    args = chat_lib.parse_args([str(runs["target"])])
    model, tokenizer, fmt = chat_lib.load(args)
    settings = {"sampler": "greedy", "max_new_tokens": 10}
    plain = chat_lib.Chat(model, tokenizer, fmt, settings).reply("abab", io.StringIO())
    for flags in (["--prompt-lookup", "3"], ["--draft-model", str(runs["draft"])]):
        draft = chat_lib._draft(chat_lib.parse_args([str(runs["target"]), *flags]))
        chat = chat_lib.Chat(model, tokenizer, fmt, settings, draft=draft)
        assert chat.reply("abab", io.StringIO()) == plain


@pytest.mark.parametrize("flags, message", [
    (["--prompt-lookup", "0"], "must be >= 1"),
    (["--prompt-lookup", "2", "--draft-model", "x"], "do not combine"),
    (["--draft-model", "OTHER"], "vocab_size=300"),
    (["--prompt-lookup", "2", "--repetition-penalty", "1.3"], "penalties"),
])
def test_chat_refuses_bad_draft_options_in_one_line(runs, flags, message, capsys):
    flags = [str(runs["other"]) if f == "OTHER" else f for f in flags]
    assert chat_lib.main([str(runs["target"]), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
