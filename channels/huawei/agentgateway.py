"""The Huawei CEC agent gateway over HTTP: sign-in with a Guid, long-polled agent events, agent conferences.

Routes live under `/agentgateway/resource/` and answer in Huawei's envelope (gateway_envelope.py). This
module is the edge: a handler authenticates the agent (its password at sign-in, the Guid it was handed
after), parses the request (gateway_parsing.py), applies it to the domain -- the signed-in agents
(gateway_sessions.py) and their conferences (gateway_conferences.py) -- and has what changed written
(gateway_writes.py) before it replies. The domain's refusals become retcodes in the envelope.

A request either fails before anything changes or is applied whole: handlers validate everything first and
only then mutate, with no await between the two. The event poll is held the way the broker holds a
/meta/connect (cometd_broker.poll_hold): one poll per agent, a newer one answers the held one with no
event, and a poll is held for `poll_wait` seconds at most a tick more. An agent that does not poll for
`idle_signout` seconds is signed out, by the sweeper or by its next request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web

from cometd_broker.login_throttle import LoginThrottle, retry_seconds
from cometd_broker.logs import bind_user
from cometd_broker.poll_hold import SUPERSEDED, HoldTimers, hold
from cometd_broker.tasks import cancel_and_wait

from ..auth import User, UserDirectory, peer_address
from ..gateway_conferences import AGENT_ADDRESS, CHANGE_JOIN, CHANGE_LEAVE, Conference, ConferenceBook, Participant
from ..gateway_refusals import NotSignedIn
from ..gateway_sessions import WAKE_SHUTDOWN, AgentSession, AgentSessions
from ..gateway_writes import GatewayWrites, Mirror
from ..store import DocumentStore
from .gateway_envelope import (
    ALREADY_SIGNED_IN,
    GUID_ERROR,
    INVALID_PARAMETER,
    NOT_CHAIRPERSON,
    NOT_SIGNED_IN,
    OPERATION_FAILED,
    PARTICIPANT_CONFLICT,
    PREFIX,
    SUCCESS,
    GatewayError,
    Handler,
    Json,
    event_reply,
    guarded,
    invalid,
    no_such_interface,
    reply,
)
from .gateway_parsing import (
    ADDRESS_TYPES,
    AGENT_TYPES,
    MAX_ADD_ADDRESSES,
    MAX_ADDRESS,
    MAX_AGENT_ID,
    MAX_CALLER,
    MAX_DEVICE_VALUE,
    MAX_PASSWORD,
    MAX_PHONE,
    MAX_REMOVE_ADDRESSES,
    MAX_VOICE_PATH,
    MIN_AGENT_ID,
    PLAY_ANNOUNCEMENT_FILE,
    SIGN_IN_STATUSES,
    BatchAdd,
    parse_agent_id,
    parse_batch_add,
    parse_batch_remove,
    parse_json_object,
    parse_sign_in,
)

log = logging.getLogger("channels.agentgateway")

# The CometD channel on which a desktop can follow its agent's gateway events (per user).
MIRROR_CHANNEL = "/v2/me/agentevents"


def _throttled(wait: float) -> GatewayError:
    # The code of a wrong password: a Huawei client has none for "locked", and the message says when to retry.
    return invalid(f"too many failed sign-ins for this agent or address: retry in {retry_seconds(wait)} s")


class AgentGateway:
    """Signed-in agents, their event queues and their conferences, served over the Huawei REST shape."""

    def __init__(self, users: UserDirectory, *, poll_wait: float = 10.0, idle_signout: float = 120.0,
                 max_events: int = 1000, clock: Callable[[], float] = time.monotonic,
                 mirror: Mirror | None = None, store: DocumentStore | None = None,
                 login_throttle: LoginThrottle | None = None,
                 client_address: Callable[[web.Request], str | None] = peer_address) -> None:
        """`mirror(user_id, event)`, when given, also receives every event queued for a signed-in
        agent, so a desktop can follow the gateway over CometD (see `MIRROR_CHANNEL`). `store` None keeps
        nothing; otherwise the conferences and sessions in it are loaded now. Sign-ins go through
        `login_throttle` (the broker's, shared with the REST API and the handshake; None: one of its own),
        counted against `client_address(request)`."""
        if poll_wait < 0 or idle_signout <= 0 or max_events < 1:
            raise ValueError("poll_wait must be >= 0, idle_signout > 0 and max_events >= 1")
        self.users = users
        self.poll_wait = poll_wait  # Huawei: AGENT_POLL_WAIT_TIMES x AGENT_POLL_WAIT_INTERVAL = 10 s
        self.idle_signout = idle_signout  # Huawei: "no event polled within 2 minutes" signs the agent out
        self.max_events = max_events
        self.clock = clock
        self.book = ConferenceBook(send=self.send)
        self.agents = AgentSessions(idle_signout=idle_signout, max_events=max_events, clock=clock,
                                    on_end=self.book.leave, user_of=self._user_of)
        self.writes = GatewayWrites(self.agents, self.book, store, mirror, self._user_of)
        self.writes.restore()
        # A held poll is answered at most a tick after poll_wait: a tenth of it, from 5 to 50 ms.
        self._holds = HoldTimers(tick=min(0.05, max(0.005, poll_wait / 10)))
        self._sweeper: asyncio.Task[None] | None = None
        self._routes_added = False
        self.login_throttle = login_throttle if login_throttle is not None else LoginThrottle()
        self.client_address = client_address

    @property
    def sessions(self) -> dict[str, AgentSession]:
        """Signed-in agents by agent ID."""
        return self.agents.by_agent

    @property
    def conferences(self) -> dict[int, Conference]:
        """Active conferences by conference ID."""
        return self.book.conferences

    @property
    def dropped_events(self) -> int:
        """Events dropped from full queues since start."""
        return self.agents.dropped_events

    # ------------------------------------------------------------ wiring and lifetime

    def add_routes(self, app: web.Application) -> None:
        """Register the gateway's routes on `app` and tie the idle sweeper to the app's lifetime."""
        if self._routes_added:
            raise RuntimeError("AgentGateway.add_routes was already called; one gateway serves one app")
        self._routes_added = True
        agent = PREFIX + "/onlineagent/{agentid}"
        conf = PREFIX + "/agentconf/{agentid}"
        app.router.add_put(agent, guarded(self._written(self.sign_in)))
        app.router.add_delete(agent + "/logout", guarded(self._written(self.sign_out)))
        app.router.add_get(PREFIX + "/agentevent/{agentid}", guarded(self.poll))
        app.router.add_post(conf + "/requestagentconf", guarded(self._written(self.request_conference)))
        app.router.add_post(conf + "/batchaddparticipant", guarded(self._written(self.batch_add)))
        app.router.add_post(conf + "/batchremoveparticipant", guarded(self._written(self.batch_remove)))
        app.middlewares.append(no_such_interface)
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._release_polls)
        app.on_cleanup.append(self._stop)

    @property
    def sweep_period(self) -> float:
        # Often enough that an idle agent goes within a quarter of the limit, never a busy loop.
        return min(1.0, max(0.01, self.idle_signout / 4))

    async def _start(self, _: web.Application) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(),
                                                                   name="agentgateway-sweeper")

    async def _release_polls(self, _: web.Application) -> None:
        # Held polls would otherwise hold a graceful shutdown for up to poll_wait.
        self.agents.release_polls(WAKE_SHUTDOWN)

    async def _stop(self, _: web.Application) -> None:
        sweeper, self._sweeper = self._sweeper, None
        await cancel_and_wait(sweeper)
        self._holds.close()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_period)
            try:
                self.sign_out_idle_agents()
                await self.writes.commit()
            except Exception:
                # One bad sweep must not stop idle sign-outs for the rest of the app's life.
                log.exception("agent gateway sweep failed")

    def sign_out_idle_agents(self) -> list[str]:
        """Sign out every agent that has not polled for `idle_signout` seconds; returns their IDs."""
        return self.agents.sign_out_idle()

    def _written(self, handler: Handler) -> Handler:
        """Run a handler, then write what it changed and mirror the events it queued (events stay sync to
        queue, async to store and mirror)."""

        async def run(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            finally:
                await self.writes.commit()  # before the reply, and before the mirror lets any event out

        return run

    # ------------------------------------------------------------ agents

    def _authorized(self, request: web.Request) -> AgentSession:
        """The path's agent, signed in, with the request's Guid equal to that agent's current Guid."""
        agent_id = parse_agent_id(request.match_info["agentid"])
        session = self.agents.signed_in(agent_id)
        guid = request.headers.get("Guid")
        if not guid:
            raise GatewayError(GUID_ERROR, "GUID error: the Guid header is missing")
        if not session.holds_guid(guid):
            raise GatewayError(GUID_ERROR, f"GUID error: the Guid header is not agent {agent_id}'s sign-in GUID")
        bind_user(self._user_of(agent_id))  # every log line of this request names its user
        return session

    def _user_of(self, agent_id: str) -> str | None:
        user = self.users.by_agent_id(agent_id)
        return user.user_id if user is not None else None

    def send(self, agent_id: str, event_type: str, content: Json) -> None:
        """Queue an event for a signed-in agent; events for agents not signed in are not kept."""
        event = self.agents.queue(agent_id, event_type, content)
        if event is not None:
            self.writes.queued(agent_id, event)

    # ------------------------------------------------------------ sign-in, sign-out, polling

    async def sign_in(self, request: web.Request) -> web.Response:
        agent_id = parse_agent_id(request.match_info["agentid"])
        options = parse_sign_in(parse_json_object(await request.read()))
        user = await self._check_password(request, agent_id, options.password)
        # After the password (an await): a concurrent sign-in may have won meanwhile.
        session, guid = self.agents.sign_in(agent_id, options)
        try:
            await self.writes.commit()
        except BaseException:  # not kept: not signed in either, or the Guid nobody received would lock the agent out
            self.agents.forget(session)
            raise
        bind_user(user.user_id)
        log.info("agent %s signed in", agent_id)
        return reply(result={"guid": guid}, headers={"Set-GUID": guid})

    async def _check_password(self, request: web.Request, agent_id: str, password: str) -> User:
        """The agent's user, or a refusal; failures count in the login throttle."""
        # Counted under the login name, so a user locked out on the REST API is locked out here too.
        owner = self.users.by_agent_id(agent_id)
        login = owner.user_id if owner is not None else f"agent-{agent_id}"
        address, throttle = self.client_address(request), self.login_throttle
        if wait := throttle.check(login, address, "gateway"):
            raise _throttled(wait)
        # An unknown agent still costs one hash check (against no user), so timing does not reveal which
        # agent IDs exist. PBKDF2 takes tens of milliseconds: keep it off the event loop.
        user = await asyncio.to_thread(self.users.authenticate, owner.user_id if owner is not None else "", password)
        if user is None:
            if wait := throttle.failed(login, address, "gateway", "wrong agent id or password"):
                raise _throttled(wait)
            # 5.4 has no credential code; 000-002 ("invalid parameter") is what a Huawei client already
            # handles as "fix the input". One message for both cases so sign-in does not reveal which
            # agent IDs exist.
            raise invalid(f"agent {agent_id} does not exist or the password is incorrect")
        if wait := throttle.succeeded(login, address, "gateway"):
            raise _throttled(wait)
        return user

    async def sign_out(self, request: web.Request) -> web.Response:
        session = self._authorized(request)
        self.agents.end(session)
        log.info("agent %s signed out", session.agent_id)
        return reply()

    async def poll(self, request: web.Request) -> web.Response:
        """The oldest queued event at once, else wait up to `poll_wait` for one; one poll per agent."""
        session = self._authorized(request)
        session.last_poll = self.clock()
        if session.events:
            return event_reply(await self._take_event(session))
        try:  # the newest poll wins: the one held is answered at once with no event
            why = await hold(session, self.poll_wait, self._holds)
        finally:
            session.last_poll = self.clock()
        if not self.agents.is_current(session):
            raise NotSignedIn(f"agent {session.agent_id} was signed out while polling")
        if why != SUPERSEDED and session.events:
            return event_reply(await self._take_event(session))
        return event_reply(None)

    async def _take_event(self, session: AgentSession) -> Json:
        """The oldest queued event, its removal stored first: an event is handed out once, or stays queued."""
        event = self.agents.take(session)
        try:
            await self.writes.commit()
        except BaseException:
            self.agents.put_back(session, event)
            raise
        return event

    # ------------------------------------------------------------ conferences

    async def request_conference(self, request: web.Request) -> web.Response:
        """requestagentconf: the requester becomes the chairperson of a new conference."""
        session = self._authorized(request)
        parse_json_object(await request.read(), empty_ok=True)  # no documented fields; must still be JSON
        conference = self.book.open(session.agent_id)
        return reply(result={"confId": conference.conf_id})

    def _chaired(self, agent_id: str) -> Conference:
        """The conference the agent chairs; only a chairperson may invite or remove."""
        return self.book.chaired_by(agent_id)

    async def batch_add(self, request: web.Request) -> web.Response:
        """batchaddparticipant (seed 003): invite 1..120 phone numbers or agents, all or none."""
        session = self._authorized(request)
        batch = parse_batch_add(parse_json_object(await request.read()))
        self.book.add(self._chaired(session.agent_id), batch.participants)
        return reply()

    async def batch_remove(self, request: web.Request) -> web.Response:
        """batchremoveparticipant (cec_07_1293): remove 1..30 participants, all or none."""
        session = self._authorized(request)
        keys = parse_batch_remove(parse_json_object(await request.read()))
        # Events are only queued so far: nothing leaves before the write.
        self.book.remove(self._chaired(session.agent_id), keys)
        return reply()


# Names other modules and the tests import from here (the envelope's retcodes and limits among them).
__all__ = [
    "ADDRESS_TYPES", "AGENT_ADDRESS", "AGENT_TYPES", "ALREADY_SIGNED_IN", "CHANGE_JOIN", "CHANGE_LEAVE", "GUID_ERROR",
    "INVALID_PARAMETER", "MAX_ADDRESS", "MAX_ADD_ADDRESSES", "MAX_AGENT_ID", "MAX_CALLER", "MAX_DEVICE_VALUE",
    "MAX_PASSWORD", "MAX_PHONE", "MAX_REMOVE_ADDRESSES", "MAX_VOICE_PATH", "MIN_AGENT_ID", "MIRROR_CHANNEL",
    "NOT_CHAIRPERSON", "NOT_SIGNED_IN", "OPERATION_FAILED", "PARTICIPANT_CONFLICT", "PLAY_ANNOUNCEMENT_FILE",
    "PREFIX", "SIGN_IN_STATUSES", "SUCCESS", "AgentGateway", "BatchAdd", "Conference", "GatewayError",
    "Participant", "parse_batch_add", "reply",
]
