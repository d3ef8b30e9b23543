"""The lecture deck: its sources (every slide has speaker notes, every figure is a registered one
and names its model, the English and Spanish decks match slide for slide, numbers come from the
manifest or a citation) and its build (HTML and PDF offline with marp-cli and Chromium, one PDF
page per slide, no remote resource, a rendered figure slide shows its figure)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SLIDES = ROOT / "slides"
DIST = SLIDES / "dist"
IMG = ROOT / "img"
DECKS = sorted(SLIDES.glob("deck.*.md"))
FULL_MANIFEST = json.loads((IMG / "manifest.json").read_text(encoding="utf-8"))
MANIFEST = FULL_MANIFEST["figures"]
CHROMIUM = os.environ.get("CHROME_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")

DIRECTIVE = re.compile(r"^\s*_?(class|paginate|footer|header|backgroundColor|color)\s*:")
COMMENT = re.compile(r"<!--(.*?)-->", re.S)
IMAGE = re.compile(r"!\[[^\]]*\]\(\.\./img/([\w./-]+)(?: \"[^\"]*\")?\)")  # an optional title: its HTML page
PLACEHOLDER = re.compile(r"\{\{[^}]*\}\}")


def placeholder_value(placeholder: str) -> str:
    """A simple ``{{figure.key.key}}`` (or ``{{model.key}}``) looked up in the committed manifest,
    as text; anything else (formats, list filters, conditionals) is left as it is."""
    path = placeholder.strip("{}").split("|")[0].strip().split(".")
    if not re.fullmatch(r"[\w-]+(\.[\w-]+)*", ".".join(path)):
        return placeholder
    value = FULL_MANIFEST["model"] if path[0] == "model" else MANIFEST.get(path[0], {}).get("results", {})
    for key in path[1:]:
        if not isinstance(value, dict) or key not in value:
            return placeholder
        value = value[key]
    return str(value)


def split_slides(text: str) -> tuple[str, list[str]]:
    """(front matter, slides) of a Marp deck: slides are separated by lines holding only ``---``."""
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return front, re.split(r"\n---\n", body)


def notes(slide: str) -> list[str]:
    """Speaker notes: the HTML comments that are not Marp directives."""
    return [c.strip() for c in COMMENT.findall(slide) if not DIRECTIVE.match(c)]


def directives(slide: str) -> list[str]:
    return [c.strip() for c in COMMENT.findall(slide) if DIRECTIVE.match(c)]


def require_tools():
    missing = [name for name, ok in [("node", shutil.which("node")), ("npm", shutil.which("npm")),
                                     ("chromium", CHROMIUM)] if not ok]
    if missing:
        if os.environ.get("MECHDEMO_REQUIRE_CHROMIUM"):
            pytest.fail(f"{', '.join(missing)} required here (MECHDEMO_REQUIRE_CHROMIUM is set) but not found")
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install chromium nodejs npm)")


# ---- sources ---------------------------------------------------------------------------------


def test_both_languages_exist():
    assert {d.name for d in DECKS} >= {"deck.es.md", "deck.en.md"}


@pytest.mark.parametrize("deck", DECKS, ids=lambda p: p.name)
def test_every_slide_has_speaker_notes(deck):
    _, slides = split_slides(deck.read_text(encoding="utf-8"))
    missing = [i + 1 for i, s in enumerate(slides) if not any(len(n) > 20 for n in notes(s))]
    assert not missing, f"{deck.name}: slides without speaker notes (<!-- ... -->): {missing}"


@pytest.mark.parametrize("deck", DECKS, ids=lambda p: p.name)
def test_every_figure_is_registered_and_its_caption_names_the_model(deck):
    import mechdemo.figures  # noqa: F401  (registers every figure)
    from mechdemo.figures.registry import FIGURES

    _, slides = split_slides(deck.read_text(encoding="utf-8"))
    lang = deck.name.split(".")[1]
    shown = 0
    for i, slide in enumerate(slides, 1):
        for file in IMAGE.findall(slide):
            shown += 1
            assert file.startswith(f"{lang}/"), f"{deck.name} slide {i}: img/{file} is not drawn in {lang!r} (img/{lang}/)"
            assert not re.search(r"!\[[^\]]*(w|h|width|height):", slide), (
                f"{deck.name} slide {i}: an image with a size in the Markdown (the theme's figure box sizes it)")
            assert (IMG / file).is_file(), f"{deck.name} slide {i}: img/{file} does not exist"
            owner = [name for name, entry in MANIFEST.items() if file in entry["files"]]
            assert owner and owner[0] in FIGURES and file in FIGURES[owner[0]].outputs, (
                f"{deck.name} slide {i}: img/{file} is not written by a registered figure")
            model = MANIFEST[owner[0]]["model"]
            caption = re.search(r'<div class="caption">(.*?)</div>', slide, re.S)
            assert caption, f"{deck.name} slide {i}: figure without a caption"
            # the model is named through a placeholder that the build fills in from the manifest of
            # the model the deck is built for (mechdemo figures --model): {{model.display_name}}, or
            # a figure's result that names it (e.g. the two models an architecture figure compares)
            text = PLACEHOLDER.sub(lambda m: placeholder_value(m.group(0)), caption.group(1))
            if model:
                named = "{{model.display_name}}" in caption.group(1) or FULL_MANIFEST["model"]["display_name"] in text
            else:
                named = "toy model" in text.lower()
            assert named, (
                f"{deck.name} slide {i}: the caption of img/{file} must name the model it was computed on "
                f"({{{{model.display_name}}}}), or 'toy model'")
    assert shown >= 15


def test_english_and_spanish_decks_match_slide_for_slide():
    def shape(deck: str):
        front, slides = split_slides((SLIDES / deck).read_text(encoding="utf-8"))
        keys = sorted(re.findall(r"^(\w+):", front, re.M))
        return keys, [([f.split("/")[-1] for f in IMAGE.findall(s)], directives(s), Counter(PLACEHOLDER.findall(s)),
                       s.count("$$"), len(re.findall(r"^```", s, re.M))) for s in slides]

    es_keys, es = shape("deck.es.md")
    en_keys, en = shape("deck.en.md")
    assert es_keys == en_keys
    assert len(es) == len(en), f"{len(es)} Spanish slides, {len(en)} English slides"
    for i, (a, b) in enumerate(zip(es, en), 1):
        assert a == b, f"slide {i} differs between the decks (images, directives, numbers, math, code): {a} vs {b}"


# Numbers on slides: computed ones are {{placeholders}} filled in from img/manifest.json at build
# time; any other decimal or percentage must sit in a sentence that cites its source. These few
# are not results: names and versions, the settings of a measurement, and the definitions of our
# own metrics.
NOT_RESULTS = [
    r"Llama[ -]3\.2", r"ARENA[ _]3\.0", r"(versión|version) 3\.9",  # names, versions
    r"1[.,]000 tokens",  # the sequence length a KV-cache size is given for
    r"2 × (capas|layers) ×",  # K and V: the factor 2 of the KV-cache size formula
]
# Counts and ratios in prose are measurements too ("3x faster", "3 of 4 initialisations", "30 layers",
# "5 dimensions"): they come from the manifest like any other number.
UNITS = (r"(?:capas?|layers?|heads?|cabezas?|inicializaciones|initiali[sz]ations?|dimensiones|dimensions?|features?|"
         r"neuronas?|neurons?|tokens?|pasos|steps?|secuencias|sequences?|prompts?|ejemplos|examples?|parámetros|"
         r"parameters?|veces|times|SAEs?|modelos|models?|contextos|contexts?|nats|segundos|seconds|ms|MB|GB|"
         r"millones|million|mil|thousand)")
COUNTS = re.compile(r"(?<![\w.,{])\d[\d.,]*\s*(?:x|×)(?!\w)"  # ratios: 3x, 4 ×
                    r"|(?<![\w.,{])\d+\s+(?:de|of)\s+(?:the\s+)?\d+(?![\w.,])"  # 3 de 4, 3 of the 4
                    r"|(?<![\w.,{}-])\d[\d.,]*\s+" + UNITS + r"\b")  # 30 capas, 5 dimensions
CITATION = re.compile(r"et al\.|\((?:19|20)\d\d\)|(?:19|20)\d\d\b")


@pytest.mark.parametrize("deck", DECKS, ids=lambda p: p.name)
def test_numbers_are_computed_or_cited(deck):
    text = deck.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", " ", text, flags=re.S)  # code
    text = re.sub(r"\$\$.*?\$\$|\$[^$\n]+\$|`[^`\n]*`", " ", text, flags=re.S)  # math, inline code
    text = PLACEHOLDER.sub("N", text)
    for pattern in NOT_RESULTS:
        text = re.sub(pattern, " ", text)
    uncited = []
    for sentence in re.split(r"(?<=[.;:!?])\s+|\n", text):
        numbers = re.findall(r"\d+[.,]\d+|\d+ ?%", sentence) + COUNTS.findall(sentence)
        if numbers and not CITATION.search(sentence):
            uncited.append((numbers, sentence.strip()[:120]))
    assert not uncited, f"{deck.name}: numbers neither computed ({{{{figure.key}}}}) nor cited: {uncited}"


# A citation on a slide or in its notes: "Olsson et al. 2022", "Wang et al. (2022)", "Heimersheim & Nanda
# 2024", or a single author's name and year in parentheses, "(Shazeer 2020)", "(Nanda 2023; Syed et al. 2023)"
# (not "In 2025 the field" or "Llama 3.2").
CITED = re.compile(r"\b(?P<name>[A-Z][\w-]+)(?:\s(?:&|and|y)\s[A-Z][\w-]+)?\set\sal\.,?\s\(?(?P<year>(?:19|20)\d\d)\b"
                   r"|\b(?P<name2>[A-Z][\w-]+)\s(?:&|and|y)\s[A-Z][\w-]+,?\s\(?(?P<year2>(?:19|20)\d\d)\b"
                   r"|(?<=;\s)(?P<name3>[A-Z][\w-]+),?\s(?P<year3>(?:19|20)\d\d)(?=[);])"
                   r"|(?<=\()(?P<name4>[A-Z][\w-]+),?\s(?P<year4>(?:19|20)\d\d)(?=[);])")
# An entry of the References slides: "- Surname et al., **Title** (2022)." (the first author and the year)
REFERENCE = re.compile(r"^- (?P<name>[\w-]+)(?: & [\w-]+| et al\.)?, .*\((?P<year>(?:19|20)\d\d)\)\.?\s*$", re.M)
REFERENCES_TITLE = re.compile(r"^## (?:References|Referencias)\b", re.M)


def citations(text: str) -> set[tuple[str, str]]:
    """(first author, year) of every citation in ``text``."""
    found = set()
    for m in CITED.finditer(text):
        name = m["name"] or m["name2"] or m["name3"] or m["name4"]
        year = m["year"] or m["year2"] or m["year3"] or m["year4"]
        found.add((name, year))
    return found


def test_citations_are_recognised():
    text = ("Olsson et al. 2022; Wang et al. (2022) broke it; (Shazeer 2020); (Nanda 2023; Syed et al. 2023); "
            "Heimersheim & Nanda 2024; In 2025 the field; GPT-2 small, Llama 3.2 1B; Claude 3 Sonnet")
    assert citations(text) == {("Olsson", "2022"), ("Wang", "2022"), ("Shazeer", "2020"), ("Nanda", "2023"),
                               ("Syed", "2023"), ("Heimersheim", "2024")}
    refs = "- Heimersheim & Nanda, **How to Use and Interpret Activation Patching** (2024).\n- Nanda, **X** (2023).\n"
    assert {(m["name"], m["year"]) for m in REFERENCE.finditer(refs)} == {("Heimersheim", "2024"), ("Nanda", "2023")}


@pytest.mark.parametrize("deck", DECKS, ids=lambda p: p.name)
def test_every_citation_is_in_the_references(deck):
    """Every work cited on a slide or in the speaker notes ("Author et al. YEAR", "Author YEAR") has an entry
    on the References slides (matched by first author and year)."""
    _, slides = split_slides(deck.read_text(encoding="utf-8"))
    references = [s for s in slides if REFERENCES_TITLE.search(s)]
    assert references, f"{deck.name}: no References slide (## References ...)"
    listed = {(m["name"], m["year"]) for s in references for m in REFERENCE.finditer(s)}
    missing = {}
    for i, slide in enumerate(slides, 1):
        if slide in references:
            continue
        for cite in citations(slide) - listed:
            missing.setdefault(f"{cite[0]} {cite[1]}", []).append(i)
    assert not missing, (f"{deck.name}: cited but not on the References slides (slides where cited): "
                         + "; ".join(f"{c} ({', '.join(map(str, where))})" for c, where in sorted(missing.items())))


def test_faithfulness_on_the_slides_is_the_formula_they_state():
    """The two faithfulness numbers of the IOI slides are the normalised ones their captions state, with the
    zero point on the slide: mean ablation, (LD circuit - LD every head ablated) / (LD model - LD every head
    ablated); edge patching, (LD circuit - LD corrupted) / (LD model - LD corrupted)."""
    f = MANIFEST["path-patching"]["results"]["circuit"]["faithfulness"]
    none, full, circuit = f["logit_diff_all_heads_ablated"], f["logit_diff_full"], f["logit_diff_circuit"]
    assert f["faithfulness"] == pytest.approx((circuit - none) / (full - none), abs=2e-3)
    assert f["logit_diff_ratio"] == pytest.approx(circuit / full, abs=2e-3)  # the plain ratio, beside it
    curves = MANIFEST["circuit-discovery-curve"]["results"]["curves"]
    n_edges = MANIFEST["circuit-discovery-curve"]["results"]["n_edges"]
    for name, points in curves.items():
        assert all(p["faithfulness"] == pytest.approx(1.0) for p in points if p["edges"] == n_edges), name
        assert all(p["faithfulness"] == pytest.approx(0.0, abs=1e-6) for p in points if p["edges"] == 0), name
    stated = {  # the number on a slide -> the placeholders its caption must show: its 0 and its 1
        "path-patching.circuit.faithfulness.faithfulness": ("path-patching.circuit.faithfulness.logit_diff_all_heads_ablated",
                                                           "path-patching.circuit.faithfulness.logit_diff_full"),
        "circuit-discovery-curve.at_target.target": ("circuit-discovery-curve.corrupted_value",
                                                      "circuit-discovery-curve.clean_value"),
    }
    for deck in DECKS:
        _, slides = split_slides(deck.read_text(encoding="utf-8"))
        for number, (zero, one) in stated.items():
            titled = [s for s in slides if re.search(r"^## .*\{\{" + re.escape(number), s, re.M)]
            assert titled, f"{deck.name}: no slide titled with {{{{{number}}}}}"
            for slide in titled:
                caption = re.search(r'<div class="caption">(.*?)</div>', slide, re.S).group(1)
                assert "{{" + zero in caption and "{{" + one in caption and " / (" in caption, (
                    f"{deck.name}: the slide titled with {number} states neither its formula nor its 0 ({zero}) and "
                    f"1 ({one}) in its caption")


# ---- build -----------------------------------------------------------------------------------


FULL = pytest.mark.full  # building the decks (marp-cli + Chromium) belongs to `make check`


@pytest.fixture(scope="module")
def built():
    """``make slides``: both decks to slides/dist/*.html and *.pdf, offline."""
    require_tools()
    env = {**os.environ, "CHROME_PATH": CHROMIUM, "PUPPETEER_SKIP_DOWNLOAD": "1"}
    if not (ROOT / "node_modules" / "@marp-team" / "marp-cli").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=ROOT, env=env, check=True,
                       capture_output=True, timeout=600)
    proc = subprocess.run(["node", "slides/build.mjs"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return env


@FULL
@pytest.mark.parametrize("lang", ["es", "en"])
def test_pdf_has_one_page_per_slide(built, lang):
    from pypdf import PdfReader

    # the resolved source: slides inside a {{#if}} for another model are not in this build
    _, slides = split_slides((DIST / f"deck.{lang}.md").read_text(encoding="utf-8"))
    assert len(PdfReader(DIST / f"deck.{lang}.pdf").pages) == len(slides)
    html = (DIST / f"deck.{lang}.html").read_text(encoding="utf-8")
    assert len(re.findall(r"<svg[^>]*data-marpit-svg", html)) == len(slides)


@FULL
@pytest.mark.parametrize("lang", ["es", "en"])
def test_built_html_needs_no_network(built, lang):
    html = (DIST / f"deck.{lang}.html").read_text(encoding="utf-8")
    resources = re.findall(r"""(?:src|srcset|poster|data)\s*=\s*["']([^"']+)""", html)
    resources += re.findall(r"""<link\b[^>]*\bhref\s*=\s*["']([^"']+)""", html)
    resources += re.findall(r"""url\(\s*["']?([^"')]+)""", html)
    resources += re.findall(r"""@import\s+(?:url\()?\s*["']?([^"');\s]+)""", html)
    remote = [r for r in resources if re.match(r"(https?:)?//", r)]
    assert not remote, f"the built deck loads remote resources: {remote[:5]}"
    assert not re.search(r"<script[^>]*\bsrc\s*=", html)  # scripts are inline
    assert "mjx-container" in html or "<svg" in html  # math was rendered at build time
    local = [r for r in resources if not r.startswith(("data:", "#", "about:"))]
    assert local, "no figures in the built deck"
    for r in local:
        assert (DIST / r.split("#")[0]).is_file(), f"deck.{lang}.html refers to {r}, missing from slides/dist/"


@FULL
@pytest.mark.parametrize("lang", ["es", "en"])
def test_html_build_embeds_the_interactive_attention_page(built, lang):
    """The last slide of the attention-pattern build is, in the HTML deck, the CircuitsVis page of its
    language (the same figure wrote both files); the PDF keeps the PNG."""
    figure = f"img/{lang}/attention_pattern_induction"
    html = (DIST / f"deck.{lang}.html").read_text(encoding="utf-8")
    assert re.search(rf'<iframe[^>]*src="{figure}\.html"', html)
    assert f"{figure}.png" not in html  # the HTML shows the page, not the picture
    page = (DIST / f"{figure}.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", page) and f'<html lang="{lang}">' in page
    pdf_source = (DIST / f"deck.{lang}.md").read_text(encoding="utf-8")
    assert f"{figure}.png" in pdf_source and "<iframe" not in pdf_source


@FULL
@pytest.mark.parametrize("lang", ["es", "en"])
def test_html_build_embeds_the_sae_browser(built, lang):
    """The first SAE feature's slide is, in the HTML deck, that feature's page in the feature browser,
    and its caption links the browser's index; slides/dist carries the site (data, script, this
    language's pages), so the built deck works when copied elsewhere. The PDF keeps the PNG."""
    feature = MANIFEST["sae_feature_1"]["results"]["feature"]
    html = (DIST / f"deck.{lang}.html").read_text(encoding="utf-8")
    assert f'<iframe class="interactive" src="img/sae_browser/{lang}/feature.html#f={feature}"' in html
    assert f'href="img/sae_browser/{lang}/index.html"' in html
    assert f"img/{lang}/sae_feature_1.png" not in html
    site = [f for f in MANIFEST["sae_browser"]["files"] if f.split("/")[1] not in ("es", "en") or f.split("/")[1] == lang]
    assert all((DIST / "img" / f).is_file() for f in site)
    pdf_source = (DIST / f"deck.{lang}.md").read_text(encoding="utf-8")
    assert f"img/{lang}/sae_feature_1.png)" in pdf_source and "feature.html#" not in pdf_source


def test_numbers_are_filled_in_from_the_manifest():
    """The build's first step alone (`--resolve-only`: no marp-cli, no Chromium): every placeholder
    is replaced by its manifest value, formatted for the deck's language."""
    if not shutil.which("node"):
        if os.environ.get("MECHDEMO_REQUIRE_CHROMIUM"):
            pytest.fail("node required here (MECHDEMO_REQUIRE_CHROMIUM is set) but not found")
        pytest.skip("node not installed")
    proc = subprocess.run(["node", "slides/build.mjs", "--resolve-only"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    es = (DIST / "deck.es.md").read_text(encoding="utf-8")
    en = (DIST / "deck.en.md").read_text(encoding="utf-8")
    assert "{{" not in es and "{{" not in en
    loss = MANIFEST["repeated_seq"]["results"]["mean_loss_second_half"]
    assert f"{loss:.2f}".replace(".", ",") in es  # Spanish decimal comma
    assert f"{loss:.2f}" in en
    # the model named in the captions is the one the figures were computed on
    model = json.loads((IMG / "manifest.json").read_text(encoding="utf-8"))["model"]
    for text in (es, en):
        captions = re.findall(r'<div class="caption">(.*?)</div>', text)
        assert sum(model["display_name"] in c for c in captions) >= 20


def resolve(source: str, manifest: dict, tmp_path: Path, lang: str = "en") -> subprocess.CompletedProcess:
    """Resolve one deck source against one manifest with the build's first step (a temporary
    slides folder: the build reads every slides/deck.<lang>.md next to it)."""
    slides = tmp_path / "slides"
    img = tmp_path / "img"
    slides.mkdir(exist_ok=True)
    img.mkdir(exist_ok=True)
    shutil.copy(SLIDES / "build.mjs", slides / "build.mjs")
    (slides / f"deck.{lang}.md").write_text(source, encoding="utf-8")
    (img / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return subprocess.run(["node", str(slides / "build.mjs"), "--resolve-only", lang], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "SLIDES_DIST": str(tmp_path / "dist")})


def test_one_number_rule_per_language(tmp_path):
    """Numbers from 1000 up are grouped in both languages, 4-digit ones included ("2,400" / "2.400", as the
    figures' :func:`mechdemo.figures.i18n.num` writes them); `id` writes an identifier's digits only, and
    `list` a list of integers with runs as ranges."""
    if not shutil.which("node"):
        pytest.skip("node not installed")
    manifest = {"model": {"name": "m", "display_name": "M"},
                "figures": {"f": {"model": "m", "files": [], "results": {
                    "edges": 2400, "big": 70651, "small": 999, "x": 1234.5, "share": 0.034, "feature": 1023,
                    "templates": [0, 1, 2, 3, 5]}}}}
    source = "{{f.edges|int}} {{f.big|int}} {{f.small}} {{f.x|.1f}} {{f.share|%1}} {{f.feature|id}} {{f.templates|list}}"
    expected = {"en": "2,400 70,651 999 1,234.5 3.4% 1023 0–3, 5",
                "es": "2.400 70.651 999 1.234,5 3,4\u00a0% 1023 0–3, 5"}
    for lang, text in expected.items():
        (tmp_path / lang).mkdir()
        proc = resolve(source, manifest, tmp_path / lang, lang)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (tmp_path / lang / "dist" / f"deck.{lang}.md").read_text(encoding="utf-8") == text


def test_conditional_text_follows_the_model_and_its_results(tmp_path):
    """`{{#if EXPR}}…{{else}}…{{/if}}` keeps the text for the model the deck is built for (and for
    results that exist); blocks nest; a number inside a dropped block is never looked up; a
    malformed block stops the build naming the line."""
    if not shutil.which("node"):
        pytest.skip("node not installed")
    manifest = {
        "model": {"name": "gpt2", "display_name": "GPT-2 small", "gqa": False, "positions": "learned",
                  "published": {"ioi": {"name_mover": [[9, 6], [9, 9]]}}},
        "figures": {"ioi": {"model": "gpt2", "files": [], "results": {
            "roles": {"name_mover": [{"layer": 9, "head": 9, "effect": 0.5}], "induction": []}, "ld": 3.14}}},
    }
    source = "\n".join([
        "# {{model.display_name}}",
        "A{{#if model.name=gpt2}} gpt2-only{{else}} other{{/if}} B",
        "{{#if model.gqa}}GQA {{ioi.no_such_key}}{{else}}MHA{{/if}}",
        "{{#if model.name!=gpt2}}never {{ioi.missing}}{{/if}}",
        "{{#if ioi.roles.induction}}induction found{{else}}no induction head{{/if}}",
        "{{#if model.positions=learned and ioi.roles.name_mover}}both{{/if}}",
        "published {{model.published.ioi.name_mover|heads}}; found {{ioi.roles.name_mover|heads}}; "
        "none {{ioi.roles.induction|heads}}; ld {{ioi.ld|.1f}}",
        "{{#if model.published.ioi}}multi",
        "line{{/if}}",
        "{{#if model.name=gpt2}}outer {{#if !ioi.roles.induction}}inner{{else}}{{ioi.missing}}{{/if}}{{/if}}",
    ])
    proc = resolve(source, manifest, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = (tmp_path / "dist" / "deck.en.md").read_text(encoding="utf-8").split("\n")
    assert out[:6] == ["# GPT-2 small", "A gpt2-only B", "MHA", "", "no induction head", "both"]
    assert out[6] == "published L9H6, L9H9; found L9H9; none —; ld 3.1"
    assert out[7:] == ["multi", "line", "outer inner"]

    manifest["model"].update(name="smollm2-135m", gqa=True)
    manifest["figures"]["ioi"]["model"] = "smollm2-135m"
    proc = resolve("x {{#if model.gqa}}GQA {{ioi.no_such_key}}{{/if}}", manifest, tmp_path)
    assert proc.returncode != 0 and 'no "no_such_key"' in proc.stderr  # a kept block is resolved
    for bad, message in [("{{#if model.gqa}}open", "never closed"), ("{{/if}}", "without {{#if}}"),
                         ("{{#if a}}{{#if b}}{{/if}}", "never closed"), ("{{else}}", "without {{#if}}")]:
        proc = resolve("line one\n" + bad, manifest, tmp_path)
        assert proc.returncode != 0 and message in proc.stderr and "deck.en.md:2" in proc.stderr, (bad, proc.stderr)


def test_the_deck_is_built_from_the_chosen_models_figures(tmp_path):
    """`make slides MODEL=x` (MECHDEMO_MODEL) reads img/<x>/, where `mechdemo figures --model x`
    writes, and writes slides/dist/<x>/; a missing model or a folder mixing two models' figures
    stops the build with the command that fixes it (resolve-only: no marp-cli, no Chromium)."""
    if not shutil.which("node"):
        pytest.skip("node not installed")
    name = "mechdemo-test-model"
    folder, dist = IMG / name, DIST / name
    manifest = json.loads((IMG / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest["figures"].values():
        if entry["model"]:
            entry["model"] = name
    manifest["model"]["name"] = name
    manifest["figures"]["repeated_seq"]["results"]["mean_loss_second_half"] = 77.7777

    def build(model: str):
        return subprocess.run(["node", "slides/build.mjs", "--resolve-only"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "MECHDEMO_MODEL": model})

    folder.mkdir()
    try:
        (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        proc = build(name)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "77,78" in (dist / "deck.es.md").read_text(encoding="utf-8")  # this model's number
        assert "77.78" in (dist / "deck.en.md").read_text(encoding="utf-8")

        manifest["figures"]["dla"]["model"] = "gpt2"
        (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        proc = build(name)
        assert proc.returncode != 0 and "mixes figures computed on" in proc.stderr
        assert f"make figures MODEL={name}" in proc.stderr

        proc = build("no-such-model")
        assert proc.returncode != 0 and "make figures MODEL=no-such-model" in proc.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(dist, ignore_errors=True)


@FULL
def test_a_rendered_figure_slide_shows_its_figure(built, tmp_path):
    """Render the DLA slide of the built deck to PNG: it is not blank, and the figure is in it
    (normalised cross-correlation of the slide with the figure, searched over scale and offset)."""
    from PIL import Image

    front, slides = split_slides((DIST / "deck.es.md").read_text(encoding="utf-8"))
    slide = next(s for s in slides if "img/es/dla.png" in s)
    one = DIST / ".one-slide.md"
    one.write_text(f"---\n{front}\n---\n{slide}", encoding="utf-8")
    out = tmp_path / "slide.png"
    try:
        proc = subprocess.run(
            ["npx", "--no-install", "marp", str(one), "--theme-set", str(SLIDES / "theme.css"),
             "--allow-local-files", "--html", "--image", "png", "-o", str(out)],
            cwd=ROOT, env=built, capture_output=True, text=True, timeout=300)
    finally:
        one.unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shot = np.asarray(Image.open(out).convert("L"), dtype=np.float32) / 255
    assert shot.shape == (720, 1280)
    assert shot.std() > 0.1 and (shot < 0.5).mean() > 0.01, "the rendered slide is blank"

    image = Image.open(out).convert("L")
    shown = best_match(image, Image.open(IMG / "es" / "dla.png").convert("L"))
    other = best_match(image, Image.open(IMG / "es" / "repeated_seq.png").convert("L"))
    assert shown > 0.85, f"the figure is not visible in the rendered slide (best correlation {shown:.2f})"
    assert other < shown - 0.15, f"another figure matches about as well ({other:.2f} vs {shown:.2f})"


def best_match(shot, figure, factor: int = 8) -> float:
    """Best normalised cross-correlation of ``figure`` placed anywhere in ``shot``, at any width
    of at least half the slide (a figure slide's figure is large), compared at 1/``factor`` of
    the resolution, both slightly blurred so that anti-aliasing does not count."""
    from PIL import Image, ImageFilter

    def prepare(image, size):
        return np.asarray(image.resize(size, Image.BOX).filter(ImageFilter.GaussianBlur(1)), dtype=np.float32)

    def standardise(a):
        return (a - a.mean()) / (a.std() + 1e-6)

    small = prepare(shot, (shot.width // factor, shot.height // factor))
    best = -1.0
    for width in range(small.shape[1] // 2, small.shape[1] + 1, 2):
        height = round(figure.height * width / figure.width)
        if height > small.shape[0]:
            continue
        t = standardise(prepare(figure, (width, height)))
        for y in range(small.shape[0] - height + 1):
            for x in range(small.shape[1] - width + 1):
                best = max(best, float((standardise(small[y:y + height, x:x + width]) * t).mean()))
    return best


# ---- what a person sees: every slide rendered at 1280 x 720 --------------------------------------

MEASURE = """<script>
window.addEventListener('load', () => {
  const slides = [...document.querySelectorAll('svg[data-marpit-svg] > foreignObject > section')]
  const report = slides.map((section, i) => {
    const box = section.getBoundingClientRect()
    const scale = box.width / 1280
    const images = [...section.querySelectorAll('img')].map((img) => {
      const r = img.getBoundingClientRect()
      return { src: img.getAttribute('src'), width: r.width / scale, height: r.height / scale,
               naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight }
    })
    return { slide: i + 1, scrollHeight: section.scrollHeight, clientHeight: section.clientHeight,
             scrollWidth: section.scrollWidth, clientWidth: section.clientWidth, images }
  })
  const pre = document.createElement('pre')
  pre.id = 'mechdemo-report'
  pre.textContent = JSON.stringify(report)
  document.body.appendChild(pre)
})
</script>"""


def rendered_slides(lang: str, env: dict, tmp_path: Path) -> list[dict]:
    """Every slide of the built deck as Chromium lays it out at 1280 x 720: each section's content
    height against its box, each image's rendered size against its PNG's (Marp's bare template
    shows all slides; a script in the page measures them and headless Chromium dumps the DOM)."""
    page = DIST / f".measure.{lang}.html"
    try:
        proc = subprocess.run(
            ["npx", "--no-install", "marp", str(DIST / f"deck.{lang}.md"), "--template", "bare",
             "--theme-set", str(SLIDES / "theme.css"), "--allow-local-files", "--html", "-o", str(page)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        page.write_text(page.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"), encoding="utf-8")
        dom = subprocess.run(
            [env["CHROME_PATH"], "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1280,720", "--allow-file-access-from-files", "--virtual-time-budget=20000",
             f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=300)
    finally:
        page.unlink(missing_ok=True)
    found = re.search(r'<pre id="mechdemo-report">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"no measurements from Chromium: {dom.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(found.group(1)))


@FULL
@pytest.mark.parametrize("lang", ["es", "en"])
def test_rendered_slides_fit_and_figures_are_readable(built, lang, tmp_path):
    """At 1280 x 720: (a) no figure is stretched (rendered aspect ratio within 2 % of its PNG's),
    (b) no slide's content overflows its box, (c) no figure's text is under 18 px: the figure's
    smallest font (pt, recorded by the registry) times its rendered width over its width in
    inches."""
    from mechdemo.figures.style import MIN_TEXT_PX

    slides = rendered_slides(lang, built, tmp_path)
    _, sources = split_slides((DIST / f"deck.{lang}.md").read_text(encoding="utf-8"))  # as resolved for this model
    assert len(slides) == len(sources)
    by_file = {f: entry for entry in MANIFEST.values() for f in entry["files"]}
    problems = []
    for s in slides:
        where = f"deck.{lang} slide {s['slide']}"
        if s["scrollHeight"] > s["clientHeight"] + 1 or s["scrollWidth"] > s["clientWidth"] + 1:
            problems.append(f"{where}: content overflows ({s['scrollWidth']} x {s['scrollHeight']} px in a "
                            f"{s['clientWidth']} x {s['clientHeight']} px slide)")
        for img in s["images"]:
            assert img["naturalWidth"] > 0, f"{where}: {img['src']} did not load"
            shown = img["width"] / img["height"]
            natural = img["naturalWidth"] / img["naturalHeight"]
            if abs(shown / natural - 1) > 0.02:
                problems.append(f"{where}: {img['src']} is distorted (shown {shown:.3f}, PNG {natural:.3f})")
            entry = by_file.get(img["src"].removeprefix("img/"))
            if entry is None:
                continue  # not a registered figure (none are, today)
            px = entry["min_font_pt"] / 72 * img["width"] / entry["size_in"][0]
            if px < MIN_TEXT_PX - 0.5:
                problems.append(f"{where}: {img['src']}'s smallest text is {px:.1f} px (floor {MIN_TEXT_PX} px)")
    assert not problems, "\n".join(problems)
