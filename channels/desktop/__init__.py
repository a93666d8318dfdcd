"""Serves the agent desktop page (this package's static/ folder) at `/` beside the contact-center API.

The page is plain HTML, CSS and ES modules with no build step. It uses the official CometD JavaScript
client, which is not copied into this repository. In a checkout, `npm ci --prefix channels/desktop`
installs it into the desktop's node_modules; building the distribution (setup.py) copies its modules into
the package as vendor/cometd, so an installed wheel has it. Either is served under VENDOR_PREFIX, the
package's own vendor/ first. When it is missing, `/` answers with a page that says how to install it
rather than a page that fails in the browser, and the start-up log says so in one WARNING.
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


def log_not_served() -> None:
    """Say at start-up why `/` has no page when --desktop-dir is empty."""
    if default_desktop_dir() is None:
        log.warning("agent desktop not served at /: %s has no static/index.html (this copy of cometd-broker was "
                    "installed without the desktop's package data); reinstall it from a wheel built from the "
                    "repository (`pip wheel .`), or give --desktop-dir a checkout's channels/desktop", DEFAULT_DIR)
    else:
        log.info("agent desktop not served at /: --desktop-dir is ''")


class DesktopDirError(ValueError):
    """The configured folder is not an agent desktop."""


def _has_client(folder: Path) -> bool:
    return (folder / "cometd.js").is_file() and (folder / "AckExtension.js").is_file()


class Desktop:
    """The folder layout: static/ (index.html, modules, css) and the CometD client in vendor/cometd (put
    there by the build: an installed copy) or node_modules/cometd (`npm ci`: a checkout)."""

    def __init__(self, folder: str | Path) -> None:
        self.root = Path(folder).resolve()
        self.static = self.root / "static"
        self.index = self.static / "index.html"
        if not self.index.is_file():
            raise DesktopDirError(f"desktop-dir {folder}: no static/index.html in it")
        packaged = self.root / "vendor" / "cometd"
        self.vendor = packaged if _has_client(packaged) else self.root / "node_modules" / "cometd"
        # A checkout (or a copy of one) has the npm manifest, so `npm ci` there fixes a missing client;
        # an installed copy has not: its wheel was built without npm.
        self.checkout = (self.root / "package-lock.json").is_file()

    def vendor_installed(self) -> bool:
        return _has_client(self.vendor)

    def how_to_fix(self) -> str:
        """The command (or the steps) that bring the missing client, in one line."""
        if self.checkout:
            return f"run `npm ci --prefix {self.root}` (Node >= 20)"
        return ("this installed copy was built without it (no npm where its wheel was built): rebuild the wheel "
                "from a checkout with npm on PATH (`pip wheel .` runs `npm ci --prefix channels/desktop`), or "
                "serve a checkout's page with --desktop-dir CHECKOUT/channels/desktop after `npm ci` there")

    def missing_vendor_page(self) -> web.Response:
        """503 with what fixes it: the page cannot work without the CometD client."""
        if self.checkout:
            command = html.escape(f"npm ci --prefix {self.root}")
            fix = ("<p>The agent desktop uses the official CometD client from npm, installed next to the page. "
                   "Install it, then reload this page:</p>"
                   f"<pre style='background:#eee;padding:1em'>{command}</pre>"
                   "<p>(<code>npm ci --prefix channels/desktop</code> from the repository root.)</p>")
        else:
            fix = ("<p>The agent desktop uses the official CometD client from npm, which the build puts into the "
                   "package. This installed copy was built where npm was not available. Rebuild the wheel from a "
                   "checkout with Node &gt;= 20 and npm on the PATH (<code>pip wheel .</code> runs "
                   "<code>npm ci --prefix channels/desktop</code>), or serve a checkout's page with "
                   "<code>--desktop-dir CHECKOUT/channels/desktop</code> after <code>npm ci</code> there.</p>")
        body = ("<!doctype html><html lang=en><meta charset=utf-8><title>Agent desktop: CometD client missing</title>"
                "<body style='font-family:sans-serif;max-width:40em;margin:3em auto'>"
                "<h1>The CometD JavaScript client is not installed</h1>"
                f"{fix}</body></html>")
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
            log.warning("agent desktop at / answers 503: its CometD JS client is missing (no %s); %s",
                        self.vendor, self.how_to_fix())
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
