"""Login throttling: failed logins counted per user name and per client address, with a lockout.

A password guesser is held to `max_failures` wrong guesses per `window` seconds, whether it aims at one
user from one address or sprays many user names from one address. When either count reaches
`max_failures` inside the sliding window, that user (or address) is locked for `window` seconds: every
login attempt for it is refused, the right password included (GWS locks accounts the same way), and
the counts start afresh once the lockout ends. A successful login forgets its user's failures, not its
address's, so one known account cannot launder an address's guesses.

An attempt that was admitted but finishes while a lockout started meanwhile (concurrent guesses) is
refused too: a guesser learns the result of no attempt past the limit, however many it sends at once.

Memory is bounded: at most `max_keys` users and addresses are tracked, each with at most
`max_failures` timestamps; past that the one idle the longest is forgotten (an attacker spraying names
or addresses can make the throttle forget an old lockout, never grow it). IPv6 addresses are counted
by their /64 network, the block one host usually has to itself.

The address is the TCP peer's: behind a reverse proxy every client shares the proxy's address, so the
per-address count then throttles all of them together (X-Forwarded-For is not trusted: any client can
send it). Counts are per process.

Used by the broker's handshake (via "handshake") and by applications' own logins (the contact-center
REST API, via "rest", and its Huawei agent-gateway sign-in, via "gateway"); the counters are written to
/metrics by metrics.py.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("cometd_broker.login")

DEFAULT_MAX_FAILURES = 20
DEFAULT_WINDOW = 60.0
DEFAULT_MAX_KEYS = 10_000
_KEY_CHARS = 128  # a longer user name is counted by its first 128 characters
_SHOWN_CHARS = 64  # and logged by its first 64
_SWEEP_LIMIT = 100  # idle entries dropped per recorded failure


@dataclass(slots=True)
class _Record:
    failures: deque[float] = field(default_factory=deque)  # times of the failures inside the window
    locked_until: float = 0.0


def address_key(address: str | None) -> str | None:
    """What an address is counted as: an IPv6 address by its /64 network, anything else as given."""
    if not address:
        return None
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address[:_KEY_CHARS]
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


def shown(value: str | None) -> str:
    """A user name or address as a log line shows it: never raw control characters or unbounded length
    (both come from the client)."""
    if value is None:
        return "-"
    text = value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "..."
    if text and all(c.isprintable() and not c.isspace() and c not in "\"'=\\" for c in text):
        return text
    return repr(text)


def _one_line(reason: str) -> str:
    """An authenticator's reason on one bounded line (it may quote what the client sent)."""
    text = "".join(c if c.isprintable() else "?" for c in reason[:200])
    return text if len(reason) <= 200 else text + "..."


class LoginThrottle:
    """Failed-login counts per user and per address, and the lockouts they cause.

    `check` before verifying credentials, then `failed` or `succeeded` after; each returns the seconds
    the attempt must be refused for (0.0: answer as the credentials deserve). `max_failures` 0 turns
    throttling off (failures are still logged and counted).
    """

    def __init__(self, max_failures: int = DEFAULT_MAX_FAILURES, window: float = DEFAULT_WINDOW, *,
                 max_keys: int = DEFAULT_MAX_KEYS, clock: Callable[[], float] = time.monotonic) -> None:
        if max_failures < 0 or not window > 0 or max_keys < 1:
            raise ValueError("max_failures must be >= 0, window > 0 and max_keys >= 1")
        self.max_failures = max_failures
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()  # least recently failed first
        self.failures: dict[str, int] = {}  # wrong credentials, by via
        self.throttled: dict[str, int] = {}  # attempts refused by a lockout, by via
        self.lockouts: dict[str, int] = {"user": 0, "address": 0}  # lockouts started, by kind of key

    @property
    def enabled(self) -> bool:
        return self.max_failures > 0

    def check(self, user: str | None, address: str | None, via: str) -> float:
        """Seconds this login attempt must be refused for because its user or address is locked; 0.0: go on."""
        wait = self._locked_for(user, address)
        if wait > 0:
            self.throttled[via] = self.throttled.get(via, 0) + 1
            log.debug("login refused user=%s address=%s via=%s: locked for %.0f s more",
                      shown(user), shown(address), via, wait)
        return wait

    def failed(self, user: str | None, address: str | None, via: str, reason: str) -> float:
        """Count a login whose credentials were wrong. 0.0: answer it as a failed login; otherwise a lockout
        started while it was being checked, and it must be refused for that many seconds like `check`'s."""
        self.failures[via] = self.failures.get(via, 0) + 1
        log.warning("login failed user=%s address=%s via=%s reason=%s", shown(user), shown(address), via,
                    _one_line(reason))
        wait = self.check(user, address, via)
        if wait > 0 or not self.enabled:
            return wait
        now = self._clock()
        for kind, key in self._keys(user, address):
            self._count(kind, key, now, address)
        self._sweep(now)
        return 0.0

    def succeeded(self, user: str | None, address: str | None, via: str, *, proven: bool = True) -> float:
        """A login whose credentials were right. 0.0: let it in (its user's failures are forgotten when
        `proven`: it was `user`'s password that was checked, not, say, a session cookie sent beside a claim);
        otherwise a lockout started while it was being checked: refuse it for that many seconds."""
        wait = self.check(user, address, via)
        if wait == 0 and user is not None and proven:
            self._records.pop(("user", user[:_KEY_CHARS]), None)
        return wait

    def __len__(self) -> int:
        """Users and addresses tracked now."""
        return len(self._records)

    def stats(self) -> Mapping[str, Any]:
        return {"failures": dict(self.failures), "throttled": dict(self.throttled),
                "lockouts": dict(self.lockouts), "tracked": len(self._records)}

    # ------------------------------------------------------------------------------------------------

    def _keys(self, user: str | None, address: str | None) -> list[tuple[str, str]]:
        keys = []
        if user:
            keys.append(("user", user[:_KEY_CHARS]))
        counted = address_key(address)
        if counted:
            keys.append(("address", counted))
        return keys

    def _locked_for(self, user: str | None, address: str | None) -> float:
        if not self.enabled or not self._records:
            return 0.0
        now = self._clock()
        wait = 0.0
        for key in self._keys(user, address):
            record = self._records.get(key)
            if record is not None and record.locked_until > now:
                wait = max(wait, record.locked_until - now)
        return wait

    def _count(self, kind: str, key: str, now: float, address: str | None) -> None:
        record = self._records.pop((kind, key), None)
        if record is None:
            record = _Record()
            while len(self._records) >= self.max_keys:
                self._records.popitem(last=False)  # the one idle the longest
        self._records[(kind, key)] = record  # now the most recently failed
        failures = record.failures
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        failures.append(now)
        if len(failures) >= self.max_failures:
            failures.clear()
            record.locked_until = now + self.window
            self.lockouts[kind] = self.lockouts.get(kind, 0) + 1
            log.warning("login locked %s=%s for %.0f s after %d failed logins within %.0f s (last from address=%s)",
                        kind, shown(key), self.window, self.max_failures, self.window, shown(address))

    def _sweep(self, now: float) -> None:
        """Forget entries with no failure inside the window and no lockout, oldest first."""
        for _ in range(_SWEEP_LIMIT):
            if not self._records:
                return
            key, record = next(iter(self._records.items()))
            if record.locked_until > now or (record.failures and record.failures[-1] > now - self.window):
                return
            del self._records[key]


def claimed_login(headers: Mapping[str, str], message: Mapping[str, Any]) -> tuple[bool, str | None]:
    """Whether a handshake presents credentials (`ext.authentication` or an `Authorization` header) and
    the user name it claims (`ext.authentication.user`, or Basic's user; None for a token). A handshake
    with only a session cookie presents none: it guesses no password, and a desktop that logged in over
    REST keeps working from an address an attacker locked."""
    ext = message.get("ext")
    auth = ext.get("authentication") if isinstance(ext, Mapping) else None
    if auth is not None:
        user = auth.get("user") if isinstance(auth, Mapping) else None
        return True, user if isinstance(user, str) else None
    header = headers.get("Authorization")
    if not header:
        return False, None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return True, None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return True, None
    user, sep, _ = decoded.partition(":")
    return True, user if sep and user else None


def retry_seconds(wait: float) -> int:
    """A wait as whole seconds for Retry-After and error strings, never 0 for a refusal."""
    return max(1, math.ceil(wait))
