"""Offline sites: static pages that open from ``file://`` with no server and no network.

* :mod:`~mechdemo.sites.static`: the generic writer (atomic, with a provenance marker) and page helpers;
* :mod:`~mechdemo.sites.feature_browser`: the SAE feature browser.
"""

from mechdemo.sites.feature_browser import (
    MARKER, PAGES, build_browser, check_browser_out, highlight_html, ui_strings, write_browser,
)
from mechdemo.sites.static import check_site_out, js_assign, site_bytes, written_site

__all__ = ["MARKER", "PAGES", "build_browser", "check_browser_out", "check_site_out", "highlight_html",
           "js_assign", "site_bytes", "ui_strings", "write_browser", "written_site"]
