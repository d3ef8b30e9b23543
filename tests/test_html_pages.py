"""The interactive pages in img/ work opened from disk, offline: rendered in headless Chromium
with the network disabled, CircuitsVis's inlined JavaScript must build the visualisation."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

IMG = Path(__file__).resolve().parents[1] / "img"
CHROMIUM = os.environ.get("CHROME_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")


def render_dom(page: Path, tmp_path: Path) -> str:
    if not CHROMIUM:
        if os.environ.get("MECHDEMO_REQUIRE_CHROMIUM"):
            pytest.fail("Chromium is required here (MECHDEMO_REQUIRE_CHROMIUM is set) but was not found")
        pytest.skip("Chromium not installed (apt-get install chromium)")
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", f"--user-data-dir={tmp_path}",
         # any request that leaves the machine fails: the page must not need one
         "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
         "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


# The attention-pattern build's last figure also writes the interactive page of all five heads,
# once per language (the HTML deck shows it in place of the PNG).
PAGES = [IMG / lang / "attention_pattern_induction.html" for lang in ("es", "en")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.parent.name)
def test_attention_page_has_no_remote_scripts(page):
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", html)
    assert "unpkg.com" not in html and "cdn.jsdelivr" not in html
    assert "CircuitsVis.render" in html
    assert f'<html lang="{page.parent.name}">' in html


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.parent.name)
def test_attention_page_renders_offline(page, tmp_path):
    source = page.read_text(encoding="utf-8")
    dom = render_dom(page, tmp_path)
    filled = re.compile(r'<div id="circuits-vis-[^"]+"[^>]*><div')
    assert not filled.search(source)  # the file holds an empty container and a script...
    assert filled.search(dom)  # ...which, run offline, builds the visualisation inside it
    assert re.search(r"<h4[^>]*>previous-token head L\d+H\d+</h4>", dom)
    assert re.search(r"<h4[^>]*>induction head L\d+H\d+</h4>", dom)
