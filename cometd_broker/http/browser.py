"""The browser policy of the HTTP transports: the BAYEUX_BROWSER cookie and the held long-polls per browser.

A browser shares a handful of connections per host among all its tabs; a tab holding a long-poll
takes one of them for the whole hold time. So, as CometD's HTTP transport does, the broker marks
each browser with a cookie and holds at most `max_sessions_per_browser` connects per browser at a
time; another tab's connect is answered at once with `multiple-clients` advice (poll every
`multi_session_interval` ms instead). The same cookie binds a session to the browser that uses it,
because a clientId is no secret (it appears in logs and the admin API):

- A session handshaken over HTTP is bound to the cookie the handshake presented, or to a new one
  issued with the reply; over websocket, to the cookie of the upgrade request, if any.
- Once a request after the handshake has carried that cookie, the client is known to keep cookies:
  every later request naming the session, over any transport, must carry the same cookie. One
  without it, or with any other value, is refused as an unknown session.
- A session never used with its cookie (a client that keeps no cookies) goes on without one; a
  request carrying another browser's cookie is refused all the same.
- Tabs of one browser that handshake at the same moment each get a new cookie and the browser
  keeps only the last: a session may move to a sibling's cookie (see `_sibling_tab`).

This is HTTP-layer policy: the broker core only asks the context's policy (`RequestContext.browser`).
"""

from __future__ import annotations

import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .. import bayeux
from ..bayeux import Message
from ..config import BrokerConfig
from ..exchange import REFUSED
from ..security import Principal

if TYPE_CHECKING:
    from ..broker import RequestContext
    from ..session import ServerSession

HTTP_TRANSPORTS = ("long-polling", "callback-polling")
_BROWSER_ID = re.compile(r"[0-9a-f]{32}\Z")
_FRESH_MAX = 100_000  # cookies remembered as just issued (sibling tabs); bounded, oldest forgotten first


def browser_id_of(cookies: Mapping[str, str], cookie_name: str) -> str | None:
    """The browser cookie's value if it is one we could have issued; anything else is ignored, not trusted."""
    browser_id = cookies.get(cookie_name)
    return browser_id if browser_id is not None and _BROWSER_ID.match(browser_id) else None


class BrowserPolicy:
    """Browser cookies and the per-browser hold limit, shared by every HTTP path of one broker."""

    def __init__(self, config: BrokerConfig) -> None:
        self.cookie_name = config.browser_cookie
        # The cookie is Secure when the port speaks TLS: decided by the configuration, not by each
        # connection, so a long-poll another cluster process relays here over the plain private port
        # gets the same cookie. (A request that came over TLS anyway, an embedding app's own TLS site,
        # gets Secure too: see the transports.)
        self.secure = config.tls
        self.max_held = config.max_sessions_per_browser
        self._poll_advice = bayeux.advice(bayeux.RETRY, config.multi_session_interval, config.timeout,
                                          **{"multiple-clients": True})
        self._fresh_for = (config.interval + config.max_interval) / 1000
        self._held: dict[str, int] = {}  # browser id -> connects held now
        # Cookies issued to cookie-less handshakes within the expiry window, oldest first.
        self._fresh: OrderedDict[str, tuple[float, Principal]] = OrderedDict()

    # ------------------------------------------------------------------ binding (RequestContext.browser)

    def bind(self, ctx: RequestContext, principal: Principal) -> tuple[str | None, str | None]:
        """At a handshake: the browser id the new session is bound to, and a cookie to set (or None).
        A handshake over HTTP with no cookie gets a new one; one over websocket without a cookie
        leaves the session unbound (the upgrade has been answered: no cookie can be set now)."""
        if ctx.browser_id is not None or ctx.transport not in HTTP_TRANSPORTS:
            return ctx.browser_id, None
        browser_id = secrets.token_hex(16)
        now = time.monotonic()
        fresh = self._fresh
        while fresh and (len(fresh) >= _FRESH_MAX or next(iter(fresh.values()))[0] < now - self._fresh_for):
            fresh.popitem(last=False)
        fresh[browser_id] = (now, principal)
        return browser_id, browser_id

    def may_use(self, session: ServerSession, ctx: RequestContext) -> bool:
        """Whether this request may drive `session` (see the module's docstring for the rule)."""
        bound, presented = session.browser_id, ctx.browser_id
        if bound is None:
            # Handshaken without a cookie where none could be set: the clientId is all it has. It is
            # never bound later, or a stranger's cookie would lock its cookie-less owner out.
            return True
        if presented == bound:
            session.cookie_seen = True
            return True
        if presented is None:
            return not session.cookie_seen  # a client that keeps no cookies, or one that dropped it
        if not self._sibling_tab(session, presented):
            return False  # another browser's cookie, or one never issued
        session.browser_id = presented
        session.cookie_seen = True
        return True

    def _sibling_tab(self, session: ServerSession, presented: str) -> bool:
        """Tabs of one browser that handshake at the same moment each get a new cookie, and the
        browser keeps only the last, which all of them then send. A session bound to a just-issued
        cookie may move to another cookie just issued to a handshake of the same principal."""
        fresh = self._fresh
        mine, theirs = fresh.get(session.browser_id or ""), fresh.get(presented)
        if mine is None or theirs is None:
            return False
        oldest = time.monotonic() - self._fresh_for
        return mine[0] >= oldest and theirs[0] >= oldest and mine[1] == theirs[1] == session.principal

    # ------------------------------------------------------------------ holds (exchange.HoldPolicy)

    def hold(self, session: ServerSession, replacing: bool) -> object:
        browser = session.browser_id
        if browser is None:
            return None  # no browser to count
        held = self._held.get(browser, 0)
        if held >= self.max_held and not replacing:  # replacing its own: the count will not grow
            return REFUSED
        self._held[browser] = held + 1
        return browser

    def refuse(self, reply: Message) -> None:
        reply["advice"] = dict(self._poll_advice)

    def released(self, token: object) -> None:
        if not isinstance(token, str):
            return
        left = self._held.get(token, 1) - 1
        if left > 0:
            self._held[token] = left
        else:
            self._held.pop(token, None)

    def held_count(self) -> int:
        """Connects held for browsers now (for tests and metrics)."""
        return sum(self._held.values())
