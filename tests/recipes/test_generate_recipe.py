"""recipes/generate.py on a hand-made run folder: streaming output, next-word mode, errors."""

import io
from pathlib import Path

import pytest

from kzoo.generation import Generator
from kzoo.models import CausalLM
from kzoo.samplers import TopPSampler
from kzoo.tokenizers import ByteTokenizer
from tests.helpers import load_module

RECIPE = Path(__file__).parents[2] / "recipes" / "generate.py"


def load_recipe():
    return load_module(RECIPE, "generate_recipe")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    model = CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=64)
    model.save(root / "model.keras")
    ByteTokenizer().save(root / "tokenizer")
    (root / "config.yaml").write_text("run_dir: x\n")
    return root


def test_streams_the_same_text_as_the_library(run_dir):
    recipe = load_recipe()
    options = recipe.resolve_options(recipe.parse_args([
        str(run_dir), "--prompt", "To be", "--sampler", "top_p", "--top-p", "0.9",
        "--top-k", "20", "--temperature", "0.8", "--max-new-tokens", "12", "--seed", "3",
        "--no-stop-at-eot",
    ]))
    out = io.StringIO()
    result = recipe.run(options, out=out)
    model, tokenizer = recipe.load_run(str(run_dir), "model.keras")
    expected = Generator(model, TopPSampler(p=0.9, top_k=20, temperature=0.8),
                         tokenizer=tokenizer).generate("To be", 12, seed=3).texts[0]
    assert result["text"] == expected
    assert out.getvalue() == "To be" + expected + "\n"


def test_config_file_and_beam(run_dir, tmp_path):
    config = tmp_path / "generate.yaml"
    config.write_text(f"run_dir: {run_dir}\nprompt: 'ab'\nsampler: beam\nnum_beams: 2\n"
                      "max_new_tokens: 5\n")
    recipe = load_recipe()
    out = io.StringIO()
    result = recipe.run(recipe.resolve_options(recipe.parse_args(["--config", str(config)])),
                        out=out)
    assert out.getvalue().startswith("ab") and isinstance(result["text"], str)


def test_next_word_mode_prints_bars_and_saves_png(run_dir, tmp_path):
    recipe = load_recipe()
    png = tmp_path / "next.png"
    out = io.StringIO()
    recipe.run(recipe.resolve_options(recipe.parse_args([
        str(run_dir), "--prompt", "Hello", "--next-word", "--k", "3",
        "--temperatures", "0.5", "2", "--png", str(png),
    ])), out=out)
    text = out.getvalue()
    assert text.count("next-token probabilities") == 2 and "temperature 0.5" in text
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["/nonexistent/run"], "does not exist"),
        ([], "Give a run folder"),
        (["RUN", "--sampler", "nucleus"], "Valid names"),
        (["RUN", "--sampler", "top_k", "--top-k", "0"], "k > 0"),
        (["RUN", "--temperature", "-1"], "temperature"),
        (["RUN", "--prompt", ""], "empty"),
        (["RUN", "--model-file", "best.keras"], "best.keras is missing"),
    ],
)
def test_bad_input_exits_with_a_clear_error(run_dir, argv, message, capsys):
    argv = [str(run_dir) if a == "RUN" else a for a in argv]
    assert load_recipe().main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_config_key(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("run_dir: x\ntemprature: 0.5\n")
    assert load_recipe().main(["--config", str(config)]) == 2
    assert "unknown key(s) ['temprature']" in capsys.readouterr().err


def test_next_word_truncate_on_the_command_line(run_dir, capsys):
    from kzoo.generation import next_word_distribution

    long = "To be, or not to be, that is the question: " * 2  # 88 bytes, the context is 64
    argv = [str(run_dir), "--prompt", long, "--next-word", "--k", "4"]
    assert load_recipe().main(argv) == 2
    assert "truncate=True" in capsys.readouterr().err
    assert load_recipe().main([*argv, "--truncate"]) == 0
    model, tokenizer = load_recipe().load_run(str(run_dir), "model.keras")
    tail = tokenizer.decode(tokenizer.encode(long)[-model.max_sequence_length:])
    expected = next_word_distribution(model, tail, k=4, tokenizer=tokenizer).bars()
    assert capsys.readouterr().out == expected + "\n"
