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
    """A copy of the page with a stand-in for the npm package, so the test does not need npm."""
    folder = tmp_path / "agent_desktop"
    shutil.copytree(REPO_DESKTOP / "static", folder / "static")
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
