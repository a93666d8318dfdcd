"""An agent desktop as the tests drive it: one browser whose cookie jar is shared by its REST calls
and its CometD session, so the login cookie alone authenticates the handshake."""

from __future__ import annotations

from typing import Any

import aiohttp

NOTIFICATIONS = "/api/v2/notifications"  # the contact center's Bayeux mount


class BrowserSession:
    def __init__(self, server: Any) -> None:
        self.server = server  # an aiohttp test server or client: anything with make_url
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.client_id = ""

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def bayeux(self, messages: list[dict[str, Any]], mount: str = NOTIFICATIONS) -> list[dict[str, Any]]:
        async with self.http.post(self.url(mount), json=messages) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def listen(self, *channels: str) -> None:
        """Handshake with the login cookie only (no credentials) and subscribe."""
        [reply] = await self.bayeux([{"channel": "/meta/handshake", "version": "1.0",
                                      "supportedConnectionTypes": ["long-polling"]}])
        assert reply["successful"] is True, reply
        self.client_id = reply["clientId"]
        await self.bayeux([{"channel": "/meta/connect", "clientId": self.client_id, "connectionType": "long-polling"}])
        replies = await self.bayeux([{"channel": "/meta/subscribe", "clientId": self.client_id,
                                      "subscription": list(channels)}])
        assert replies[0]["successful"] is True, replies

    async def close(self) -> None:
        await self.http.close()
