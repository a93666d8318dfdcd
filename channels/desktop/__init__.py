"""Serves the agent desktop page (this package's static/ folder) at `/` beside the contact-center API.

The page is plain HTML, CSS and ES modules with no build step. It uses the official CometD JavaScript
client, which is not copied into this repository: `npm ci --prefix channels/desktop` installs it
into the desktop's node_modules, and the broker serves the installed package under VENDOR_PREFIX.
When it is missing, `/` answers with a page that says how to install it rather than a page that fails
in the browser.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

from aiohttp import web

log = logging.getLogger("channels.desktop")

PAGE_PREFIX = "/desktop"  # the page's own modules and stylesheet
VENDOR_PREFIX = "/desktop/vendor/cometd"  # the installed npm package `cometd`
# The page ships inside this package (static/ is package data).
DEFAULT_DIR = Path(__file__).resolve().parent


def default_desktop_dir() -> str | None:
    """The package's desktop folder when its page is there, else None (no page served)."""
    return str(DEFAULT_DIR) if (DEFAULT_DIR / "static" / "index.html").is_file() else None


class DesktopDirError(ValueError):
    """The configured folder is not an agent desktop."""


class Desktop:
    """The folder layout: static/ (index.html, modules, css) and node_modules/cometd."""

    def __init__(self, folder: str | Path) -> None:
        self.root = Path(folder).resolve()
        self.static = self.root / "static"
        self.index = self.static / "index.html"
        self.vendor = self.root / "node_modules" / "cometd"
        if not self.index.is_file():
            raise DesktopDirError(f"desktop-dir {folder}: no static/index.html in it")

    def vendor_installed(self) -> bool:
        return (self.vendor / "cometd.js").is_file() and (self.vendor / "AckExtension.js").is_file()

    def missing_vendor_page(self) -> web.Response:
        """503 with the command that fixes it: the page cannot work without the CometD client."""
        command = f"npm ci --prefix {html.escape(str(self.root))}"
        body = ("<!doctype html><html lang=en><meta charset=utf-8><title>Agent desktop: CometD client missing</title>"
                "<body style='font-family:sans-serif;max-width:40em;margin:3em auto'>"
                "<h1>The CometD JavaScript client is not installed</h1>"
                "<p>The agent desktop uses the official CometD client from npm, installed next to the page. "
                "Install it, then reload this page:</p>"
                f"<pre style='background:#eee;padding:1em'>{command}</pre>"
                "<p>(<code>npm ci --prefix channels/desktop</code> from the repository root.)</p></body></html>")
        return web.Response(status=503, text=body, content_type="text/html")

    async def page(self, request: web.Request) -> web.StreamResponse:
        if not self.vendor_installed():
            return self.missing_vendor_page()
        # no-cache: a redeployed desktop is picked up on the next load, never a stale mix of modules.
        return web.FileResponse(self.index, headers={"Cache-Control": "no-cache"})

    async def vendor_missing(self, request: web.Request) -> web.StreamResponse:
        return self.missing_vendor_page()

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/", self.page)
        app.router.add_get("/index.html", self.page)
        if self.vendor_installed():
            app.router.add_static(VENDOR_PREFIX, self.vendor)
        else:
            log.warning("agent desktop: %s is missing; run `npm ci --prefix %s`", self.vendor, self.root)
            app.router.add_get(VENDOR_PREFIX + "/{tail:.*}", self.vendor_missing)
        app.router.add_static(PAGE_PREFIX, self.static)


def add_routes(app: web.Application, folder: str | Path, bayeux_mount: str) -> Desktop | None:
    """Serve the desktop at `/`, unless the Bayeux endpoint itself is mounted there (it takes every path)."""
    desktop = Desktop(folder)
    if bayeux_mount.rstrip("/") == "":
        log.warning("agent desktop not served: the Bayeux endpoint is mounted at /")
        return None
    desktop.add_to(app)
    log.info("agent desktop at / (from %s)", desktop.root)
    return desktop
