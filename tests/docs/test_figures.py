"""The committed figures: each one is shown by a page, each one shown exists, all are small,
and the drawing code of `scripts/make_figures.py` runs on a tiny model."""

import importlib.util
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "docs" / "assets" / "figures"
MAX_TOTAL_BYTES = 600 * 1024


def _load_script():
    spec = importlib.util.spec_from_file_location("make_figures",
                                                  ROOT / "scripts" / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _referenced() -> set[str]:
    names = set()
    for page in (ROOT / "docs").rglob("*.md"):
        names |= set(re.findall(r"assets/figures/([\w.-]+)", page.read_text(encoding="utf-8")))
    return names


def test_every_figure_is_shown_and_every_shown_figure_exists():
    referenced = _referenced()
    present = {p.name for p in FIGURES.iterdir() if p.suffix in (".png", ".txt")}
    assert referenced - present == set(), "pages show figures that do not exist"
    assert present - referenced == set(), "figures that no page shows"


def test_figures_are_commit_sized_pngs():
    pngs = sorted(FIGURES.glob("*.png"))
    assert len(pngs) >= 7
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    total = sum(p.stat().st_size for p in pngs)
    assert total < MAX_TOTAL_BYTES, f"figures take {total / 1024:.0f} KB"


def test_figure_drawing_runs_on_a_tiny_model(tmp_path, monkeypatch):
    import keras

    from kzoo.models import CausalLM
    from kzoo.tokenizers import train_tokenizer

    script = _load_script()
    # Each sampling temperature compiles its own decoding program: two are enough here.
    monkeypatch.setattr(script, "SAMPLE_TEMPERATURES", (0.5, 1.5))
    text = " ".join([script.NEXT_WORD_PROMPT, script.SAMPLE_PROMPT, script.ATTENTION_SENTENCE])
    run = tmp_path / "run"
    tokenizer = train_tokenizer("char", [text])
    tokenizer.save(run / "tokenizer")
    model = CausalLM.from_preset("gpt_nano", vocab_size=tokenizer.vocab_size,
                                 max_sequence_length=128)
    model.save(run / "model.keras")
    (run / "metrics.csv").write_text(
        "epoch,loss,lr,step,val_loss\n0,3.0,0.001,10,3.1\n1,2.5,0.0005,20,2.7\n")
    facts = {"preset": "gpt_nano", "config": "tiny", "steps": 20, "val_loss": 2.7,
             "val_perplexity": float(np.exp(2.7)), "date": "today"}
    out = tmp_path / "figures"
    written = script.pretrain_figures(run, out, facts)
    names = {p.name for p in written}
    assert {"next_word.png", "temperatures.png", "attention.png", "logit_lens.png",
            "parameters.png", "training_curves.png", "temperature_samples.txt",
            "provenance.txt"} <= names
    samples = (out / "temperature_samples.txt").read_text()
    assert samples.count("T = ") == len(script.SAMPLE_TEMPERATURES)
    assert "validation loss 2.70" in (out / "provenance.txt").read_text()
    keras.backend.clear_session()


def test_safe_text_cannot_break_the_page():
    script = _load_script()
    text = script._safe_text("a ``` b --8<-- c ~~~ d")
    assert "```" not in text and "--8<--" not in text and "~~~" not in text
