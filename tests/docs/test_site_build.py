"""`mkdocs build --strict` succeeds (the `built_site` fixture fails otherwise) and the site
holds what the pages promise: every page, the figures, the generated tables."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_doc_page_is_built(built_site):
    pages = [p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts]
    for page in pages:
        relative = page.relative_to(ROOT / "docs").with_suffix("")
        folder = relative.parent if relative.name == "index" else relative
        target = built_site / folder / "index.html"
        assert target.is_file(), f"{page} was not built ({target} is missing)"
    assert not (built_site / "hooks").exists(), "the mkdocs hook must not be published"


def test_figures_and_api_reference_are_published(built_site):
    for png in (ROOT / "docs" / "assets" / "figures").glob("*.png"):
        assert (built_site / "assets" / "figures" / png.name).is_file()
    layers = (built_site / "reference" / "layers" / "index.html").read_text(encoding="utf-8")
    for name in ("CausalSelfAttention", "TransformerBlock", "RMSNorm", "rotary_cos_sin"):
        assert name in layers, f"{name} is missing from the kzoo.layers reference"


def test_generated_tables_are_current(built_site):
    benchmarks = (built_site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    for result in (ROOT / "benchmarks" / "results").glob("*.json"):
        assert f"<code>{result.stem}</code>" in benchmarks, f"{result.name} not on the page"
    recipes = (built_site / "recipes" / "index.html").read_text(encoding="utf-8")
    for config in (ROOT / "recipes" / "configs").glob("*/*.yaml"):
        assert config.name in recipes, f"{config} is not listed on the recipes page"
