"""How the broker serves the agent desktop page (no browser needed): `/`, its modules, the installed CometD
client, the page that says how to install a missing client, and the 401 a script gets without a Basic
challenge (which would pop up the browser's own login dialog)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from channels import desktop
from channels.auth import UserDirectory
from cometd_broker import BrokerConfig, create_app
from cometd_broker.app import BROKER
from cometd_broker.cli import build_parser, plugins

REPO_DESKTOP = Path(__file__).resolve().parents[2] / "channels" / "desktop"


@pytest.fixture
def users_file(tmp_path: Path) -> str:
    directory = UserDirectory()
    directory.add("agent1", "agent1-secret", first_name="Alice")
    path = tmp_path / "users.json"
    directory.save(path)
    return str(path)


@pytest.fixture
def desktop_dir(tmp_path: Path) -> Path:
    """A copy of the checkout's page with a stand-in for the npm package, so the test does not need npm."""
    folder = tmp_path / "agent_desktop"
    shutil.copytree(REPO_DESKTOP / "static", folder / "static")
    for manifest in ("package.json", "package-lock.json"):
        shutil.copy(REPO_DESKTOP / manifest, folder / manifest)
    vendor = folder / "node_modules" / "cometd"
    vendor.mkdir(parents=True)
    (vendor / "cometd.js").write_text('export * from "./Client.js";\n')
    (vendor / "AckExtension.js").write_text("export class AckExtension {}\n")
    return folder


def build_app(*flags: str):
    args = build_parser().parse_args(["serve", "--state-db", ":memory:", *flags])
    app = create_app(BrokerConfig(event_log="memory:"))
    for plugin in plugins():
        plugin.install(app, app[BROKER], args)
    return app


async def test_the_page_its_modules_and_the_installed_cometd_client_are_served(aiohttp_client, users_file,
                                                                               desktop_dir):
    client = await aiohttp_client(build_app("--users-file", users_file, "--desktop-dir", str(desktop_dir)))
    page = await client.get("/")
    assert page.status == 200
    assert page.content_type == "text/html"
    assert '<script type="module" src="/desktop/main.js">' in await page.text()
    module = await client.get("/desktop/main.js")
    assert module.status == 200
    # Browsers refuse to run a module served with a non-JavaScript type.
    assert module.content_type in ("application/javascript", "text/javascript")
    assert 'from "/desktop/connection.js"' in await module.text()
    vendor = await client.get("/desktop/vendor/cometd/AckExtension.js")
    assert vendor.status == 200
    assert await vendor.text() == "export class AckExtension {}\n"
    # Only static/ is published: not package.json, nothing above the folder.
    assert (await client.get("/desktop/../package.json")).status == 404
    assert (await client.get("/desktop/vendor/cometd/../../../package.json")).status == 404


async def test_a_missing_cometd_client_gets_a_page_that_says_how_to_install_it(aiohttp_client, users_file,
                                                                              desktop_dir):
    shutil.rmtree(desktop_dir / "node_modules")
    client = await aiohttp_client(build_app("--users-file", users_file, "--desktop-dir", str(desktop_dir)))
    for path in ("/", "/desktop/vendor/cometd/cometd.js"):
        response = await client.get(path)
        assert response.status == 503
        body = await response.text()
        assert "The CometD JavaScript client is not installed" in body
        assert f"npm ci --prefix {desktop_dir.resolve()}" in body


def test_a_folder_without_the_page_is_refused_at_start(users_file, tmp_path: Path):
    with pytest.raises(ValueError, match=r"desktop-dir .*: no static/index.html in it"):
        build_app("--users-file", users_file, "--desktop-dir", str(tmp_path))


async def test_no_page_without_the_contact_center_api_or_with_an_empty_desktop_dir(aiohttp_client, users_file,
                                                                                   desktop_dir):
    without_api = await aiohttp_client(build_app("--desktop-dir", str(desktop_dir)))
    assert (await without_api.get("/")).status == 404
    turned_off = await aiohttp_client(build_app("--users-file", users_file, "--desktop-dir", ""))
    assert (await turned_off.get("/")).status == 404


def test_the_default_folder_is_the_repository_desktop():
    assert desktop.default_desktop_dir() == str(REPO_DESKTOP)


async def test_a_script_gets_401_without_a_basic_challenge(aiohttp_client, users_file, desktop_dir):
    client = await aiohttp_client(build_app("--users-file", users_file, "--desktop-dir", str(desktop_dir)))
    from_script = await client.get("/api/v2/me", headers={"X-Requested-With": "XMLHttpRequest"})
    assert from_script.status == 401
    assert "WWW-Authenticate" not in from_script.headers
    assert await from_script.json() == {"statusCode": 20,
                                        "statusMessage": "authentication required: log in with Basic credentials"}
    wrong = await client.get("/api/v2/me", headers={"X-Requested-With": "XMLHttpRequest",
                                                    "Authorization": "Basic YWdlbnQxOndyb25n"})
    assert wrong.status == 401
    assert "WWW-Authenticate" not in wrong.headers
    plain = await client.get("/api/v2/me")  # curl and GWS clients still get the challenge
    assert plain.headers["WWW-Authenticate"] == 'Basic realm="GWS"'


def packaged_copy(desktop_dir: Path) -> Path:
    """The folder as a wheel installs it: static/ and the client in vendor/cometd, no npm manifest or node_modules."""
    shutil.move(desktop_dir / "node_modules" / "cometd", desktop_dir / "vendor" / "cometd")
    for leftover in ("node_modules", "package.json", "package-lock.json"):
        path = desktop_dir / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return desktop_dir


async def test_an_installed_copy_serves_the_client_from_its_vendor_folder(aiohttp_client, users_file, desktop_dir):
    folder = packaged_copy(desktop_dir)
    client = await aiohttp_client(build_app("--users-file", users_file, "--desktop-dir", str(folder)))
    assert (await client.get("/")).status == 200
    vendor = await client.get("/desktop/vendor/cometd/AckExtension.js")
    assert vendor.status == 200
    assert await vendor.text() == "export class AckExtension {}\n"


async def test_the_vendor_folder_wins_over_node_modules(aiohttp_client, users_file, desktop_dir):
    vendor = desktop_dir / "vendor" / "cometd"
    shutil.copytree(desktop_dir / "node_modules" / "cometd", vendor)
    (vendor / "cometd.js").write_text("// packaged\n")
    client = await aiohttp_client(build_app("--users-file", users_file, "--desktop-dir", str(desktop_dir)))
    assert await (await client.get("/desktop/vendor/cometd/cometd.js")).text() == "// packaged\n"


async def test_an_installed_copy_built_without_npm_says_how_to_fix_it(aiohttp_client, users_file, desktop_dir,
                                                                      caplog):
    folder = packaged_copy(desktop_dir)
    shutil.rmtree(folder / "vendor")
    with caplog.at_level("WARNING", logger="channels.desktop"):
        client = await aiohttp_client(build_app("--users-file", users_file, "--desktop-dir", str(folder)))
    [warning] = [r for r in caplog.records if r.name == "channels.desktop" and r.levelname == "WARNING"]
    message = warning.getMessage()
    assert "\n" not in message
    assert "CometD JS client is missing" in message
    assert "built without it" in message and "pip wheel ." in message and "--desktop-dir" in message
    page = await client.get("/")
    assert page.status == 503
    body = await page.text()
    assert "built where npm was not available" in body
    assert "npm ci --prefix" not in body.replace("<code>npm ci --prefix channels/desktop</code>", "")


async def test_a_checkout_without_the_client_logs_the_npm_command(aiohttp_client, users_file, desktop_dir, caplog):
    shutil.rmtree(desktop_dir / "node_modules")
    with caplog.at_level("WARNING", logger="channels.desktop"):
        await aiohttp_client(build_app("--users-file", users_file, "--desktop-dir", str(desktop_dir)))
    [warning] = [r for r in caplog.records if r.name == "channels.desktop" and r.levelname == "WARNING"]
    assert f"run `npm ci --prefix {desktop_dir.resolve()}`" in warning.getMessage()


async def test_an_installation_without_the_page_says_so_at_start(aiohttp_client, users_file, monkeypatch, caplog):
    monkeypatch.setattr(desktop, "DEFAULT_DIR", Path("/nonexistent/channels/desktop"))
    monkeypatch.delenv("COMETD_BROKER_DESKTOP_DIR", raising=False)
    with caplog.at_level("INFO", logger="channels.desktop"):
        client = await aiohttp_client(build_app("--users-file", users_file))
    [warning] = [r for r in caplog.records if r.name == "channels.desktop" and r.levelname == "WARNING"]
    assert "agent desktop not served at /" in warning.getMessage()
    assert "without the desktop's package data" in warning.getMessage()
    assert (await client.get("/")).status == 404
