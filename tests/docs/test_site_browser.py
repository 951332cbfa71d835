"""The built site, served on 127.0.0.1 and opened in headless Chromium: every page renders,
every image loads, no internal link is broken, and the browser asks for no missing file.

The site is served by `serve_site.py` in its own process, which logs every request. Chromium
is driven by Playwright (`tests/browser.py`): each page is opened, its `load` event awaited
(it waits for the page's images), then a script reads the title, headings, images
(`naturalWidth`), links and element ids. Uncaught script errors, console errors and failed
requests are collected per page.

Chromium is Debian's `chromium` package (CI installs it). Without it the tests skip, unless
`CI` is set: then they fail.
"""

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urlsplit

import pytest

from tests.browser import require_chromium, require_playwright
from tests.browser import visit as open_page

# Evaluated in each page after its load event; returns plain JSON.
COLLECT = """({
  title: document.title,
  h1: document.querySelector("article h1") ? document.querySelector("article h1").textContent
      : null,
  article_chars: document.querySelector("article")
      ? document.querySelector("article").textContent.trim().length : 0,
  nav_links: document.querySelectorAll("nav.md-nav a.md-nav__link[href]").length,
  theme_ready: typeof window.document$ !== "undefined",
  images: Array.from(document.images).map(img => ({
      src: img.currentSrc || img.src, complete: img.complete, width: img.naturalWidth})),
  links: Array.from(document.querySelectorAll("a[href]")).map(a => a.href),
  ids: Array.from(document.querySelectorAll("[id]")).map(e => e.id),
})"""


def test_missing_chromium_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception):
        require_chromium({})
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_chromium({"CI": "true"})


def test_missing_playwright_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)  # import raises ImportError
    with pytest.raises(pytest.skip.Exception):
        require_playwright({})
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_playwright({"CI": "true"})


@pytest.fixture(scope="module")
def server(built_site, tmp_path_factory):
    """(base URL, request log) of the site served by `serve_site.py` in its own process."""
    log = tmp_path_factory.mktemp("server") / "requests.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("serve_site.py")), str(built_site),
         str(log)], stdout=subprocess.PIPE, text=True,
    )
    try:
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _page_urls(site: Path) -> list[str]:
    """Every page of the built site as a URL path ("/", "/concepts/attention/", ...)."""
    urls = []
    for index in sorted(site.rglob("index.html")):
        relative = index.parent.relative_to(site).as_posix()
        urls.append("/" if relative == "." else f"/{relative}/")
    return urls


@pytest.fixture(scope="module")
def browser_report(server, built_site, browser):
    base, log = server
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        visits = [open_page(page, base + url, COLLECT) for url in _page_urls(built_site)]
    finally:
        page.close()
    requests = [tuple(json.loads(line)) for line in log.read_text().splitlines()]
    return {"visits": visits, "base": base, "requests": requests}


def test_every_page_renders(browser_report):
    visits = browser_report["visits"]
    assert len(visits) >= 20, "expected every page of the site to be visited"
    problems = []
    for visit in visits:
        page = visit.value
        if not page["title"] or not page["h1"]:
            problems.append(f"{visit.url}: no title or no <h1> in the article")
        if page["article_chars"] < 200:
            problems.append(f"{visit.url}: the article holds {page['article_chars']} characters")
        if page["nav_links"] < 10:
            problems.append(f"{visit.url}: navigation has {page['nav_links']} links")
        if not page["theme_ready"]:
            problems.append(f"{visit.url}: the theme's scripts did not run")
    assert not problems, "\n".join(problems)


def test_no_script_errors_or_failed_requests(browser_report):
    problems = [f"{v.url}: {p}" for v in browser_report["visits"]
                for p in v.errors + v.failed_requests]
    assert not problems, "\n".join(problems)


def test_every_image_loads(browser_report):
    images = [(v.url, img) for v in browser_report["visits"] for img in v.value["images"]]
    broken = [f"{page}: {img['src']} (complete={img['complete']}, width={img['width']})"
              for page, img in images if not img["complete"] or img["width"] == 0]
    assert not broken, "\n".join(broken)
    figures = {img["src"].rsplit("/", 1)[-1] for _, img in images
               if "/assets/figures/" in img["src"]}
    assert len(figures) >= 7, f"figures shown on the site: {sorted(figures)}"


def test_no_internal_link_is_broken(browser_report):
    base = browser_report["base"]
    ids_by_url = {v.url: set(v.value["ids"]) for v in browser_report["visits"]}
    status: dict[str, int] = {}
    broken = []
    for visit in browser_report["visits"]:
        for link in visit.value["links"]:
            if not link.startswith(base):
                continue  # external links are not ours to check offline
            target, fragment = urldefrag(link)
            if target not in status:
                try:
                    with urllib.request.urlopen(target, timeout=10) as response:
                        status[target] = response.status
                except urllib.error.HTTPError as error:
                    status[target] = error.code
            if status[target] != 200:
                broken.append(f"{visit.url}: {link} -> HTTP {status[target]}")
            elif fragment and target in ids_by_url and fragment not in ids_by_url[target]:
                broken.append(f"{visit.url}: {link} -> no element with id {fragment!r}")
    assert len(status) >= 20, "expected links to every page"
    assert not broken, "\n".join(sorted(set(broken)))


def test_browser_requested_no_missing_file(browser_report):
    missing = sorted({f"{path} -> {code}" for path, code in browser_report["requests"]
                      if code >= 400 and urlsplit(path).path != "/favicon.ico"})
    assert not missing, "\n".join(missing)
