"""Static sites that open from disk: no server, no network, written whole or not at all.

mechdemo's offline sites (the SAE feature browser; the attribution-graph viewer) are folders of HTML
pages, a hand-written script and style sheet, and data. A page opened from ``file://`` may not
``fetch`` the files next to it (Chromium blocks it), but it may load scripts: so the data are ``.js``
files that assign a global (:func:`js_assign`), loaded with ``<script>`` tags.

:func:`written_site` writes a site into a sibling folder and renames it into place when complete
(:func:`mechdemo.files.folder_written_atomically`): an interrupted run leaves the old site, or none,
never half of one. Each site carries a marker file (its provenance and file list), which is also how
a folder is known to be one mechdemo wrote: :func:`check_site_out` refuses to replace anything else.
"""

from __future__ import annotations

import contextlib
import html
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from mechdemo import __version__
from mechdemo.errors import MechdemoError
from mechdemo.files import check_writable, folder_written_atomically

ASSETS = Path(__file__).parent / "assets"  # the sites' scripts, style sheets and page templates

Put = Callable[[str, str], None]  # put(relative path, text)


def check_site_out(out: str | Path, marker: str, what: str, overwrite: bool = False) -> Path:
    """Check, before any work, that a site can be written to ``out``: not a file, not a folder holding
    anything but a site of this kind (it holds ``marker``), and an existing one only with ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MechdemoError(f"--out {out} is a file, not a folder: choose a folder for the {what}")
    if out.is_dir() and any(out.iterdir()):
        if not (out / marker).is_file():
            raise MechdemoError(f"--out {out} is a folder that holds something other than a {what}: choose "
                                "another (mechdemo never replaces a folder it did not write)")
        if not overwrite:
            raise MechdemoError(f"--out {out} already holds a {what}: pass --overwrite to replace it, or "
                                "choose another --out")
    check_writable(out)
    return out


def js_assign(name: str, value: Any) -> str:
    """A script that sets ``window.<name>`` to ``value`` (compact JSON): a data file a page loads."""
    return f"window.{name} = {json.dumps(value, ensure_ascii=False, separators=(',', ':'))};\n"


def redirect_page(title: str, languages: list[str], page: str = "index.html") -> str:
    """The site's top ``index.html``: a redirect to the first language's ``page``, with a link to each."""
    links = "".join(f'<li><a href="{lang}/{page}">{lang}</a></li>' for lang in languages)
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}'
            f'</title><meta http-equiv="refresh" content="0; url={languages[0]}/{page}"></head>'
            f"<body><ul>{links}</ul></body></html>\n")


@contextlib.contextmanager
def written_site(out: str | Path, marker: str, provenance: dict[str, Any]) -> Iterator[tuple[Put, list[str]]]:
    """Inside the block, ``put(rel, text)`` writes a file of the site; when the block ends the marker file
    (``mechdemo_version``, ``provenance`` and the sorted file list) is added and the site renamed into
    ``out``. Yields ``(put, files)``: ``files`` is the list of files written so far (relative paths)."""
    out = Path(out)
    files: list[str] = []
    with folder_written_atomically(out, "writing") as tmp:

        def put(rel: str, text: str) -> None:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")
            files.append(rel)

        yield put, files
        put(marker, json.dumps({"mechdemo_version": __version__, **provenance, "files": sorted(files)},
                               indent=2, sort_keys=True) + "\n")
    files.sort()


def site_bytes(out: str | Path) -> int:
    """The total size of a site's files."""
    return sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
