"""`cometd-broker serve --demo`: demo agents, and simulated customers so that a new user sees events at once.

`install_demo` adds a few agents and a supervisor with generated passwords (the CLI prints them) and a
`CustomerSimulator` that plays the media gateway's part through the same `Conversations` methods
`gws/media.py` calls: customers arrive by SMS or chat with a first message, type and answer a few seconds after
the agent writes, and leave after a few exchanges. It only reads the customer-visible transcript, so
agents-only messages (consults, SendToAgents) never get an answer, as with a real customer.

One background task does everything, started on app startup and cancelled on cleanup. A customer action
that fails (the agent completed the chat a moment before the customer's reply) is logged and that customer
is forgotten; the server never sees the simulator's errors.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from .auth import UserDirectory
from .conversation import Conversations
from .errors import ContactCenterError
from .model import CHAT, SMS, LegState, MediaKind, MessageType

if TYPE_CHECKING:  # app.py imports this module to serve --demo
    from .app import ContactCenter

log = logging.getLogger("channels.demo")

MAX_ACTIVE = 5  # demo customers at once (waiting, offered or chatting): a demo must not flood a queue


@dataclass(frozen=True)
class DemoUser:
    user_id: str
    first_name: str
    last_name: str
    roles: tuple[str, ...]
    agent_id: str | None


DEMO_USERS = (
    DemoUser("agent1", "Ada", "Agent", ("agent",), "101"),
    DemoUser("agent2", "Ben", "Agent", ("agent",), "102"),
    DemoUser("agent3", "Cleo", "Agent", ("agent",), "103"),
    DemoUser("supervisor", "Sam", "Supervisor", ("supervisor",), None),
)


@dataclass(frozen=True)
class Script:
    """What one customer says: the first message, one answer per agent message, then goodbye."""

    opening: str
    replies: tuple[str, ...]
    farewell: str


SCRIPTS = (
    Script("Hi, my order #4521 has not arrived yet.",
           ("It was due last Tuesday.", "The address is 12 Elm Street.", "Could you send me the tracking link?"),
           "Got it, thanks for your help. Bye!"),
    Script("Hello, I was charged twice this month.",
           ("Both charges are 19.99, on the 3rd.", "The card ends in 4242.", "How long does the refund take?"),
           "Perfect, thank you!"),
    Script("Can I still change my delivery address?",
           ("It is order #7781.", "The new address is 5 Harbour Road.", "Will that delay the delivery?"),
           "Good to know, thanks. Bye!"),
    Script("Hi! Do you have the blue jacket in size M?",
           ("The one from the spring collection.", "Could you reserve it for me?", "I will pick it up on Saturday."),
           "Thanks, see you then!"),
    Script("The password reset email never arrives.",
           ("I checked the spam folder too.", "It is alex@example.com.", "It worked this time!"),
           "Thank you so much!"),
)
NICKNAMES = ("Alex", "Bea", "Chris", "Dana", "Eli", "Fran", "Gus", "Hana", "Ivan", "Jo", "Kim", "Lou")


@dataclass
class DemoCustomer:
    """One simulated customer and what they will do next."""

    media: MediaKind
    interaction_id: str
    nickname: str
    script: Script
    rng: random.Random  # this customer's own delays, so one customer's timing does not shift another's
    waiting_since: float  # when the customer last had an agent chatting (or arrived)
    said: int = 0  # script replies sent so far
    answered: int = 0  # agent text messages already answered (or being answered)
    action: str | None = None  # "type", "reply" or "leave", due at `due`
    due: float = 0.0


@dataclass(frozen=True)
class Arrival:
    """The plan for the next customer; drawn from the seeded generator alone, so it is reproducible."""

    media: MediaKind
    nickname: str
    script: Script
    queue: str
    delay_seed: int


@dataclass
class CustomerSimulator:
    """Brings in at most `max_active` demo customers, one every `interval` seconds, and plays their side.

    Delays scale with `interval` (at the default 8 s a customer thinks 1.6-3.2 s and types 0.8-1.6 s), so
    tests run the same simulation quickly. A customer left without an agent in the chat for `patience` seconds gives up.
    """

    conversations: Conversations
    interval: float = 8.0
    seed: int | None = None
    max_active: int = MAX_ACTIVE
    patience: float | None = None  # default: max(60 s, 15 intervals)
    customers: dict[str, DemoCustomer] = field(default_factory=dict)  # by interaction id, while they last
    arrivals: int = field(default=0, init=False)  # customers brought in so far
    _task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.max_active < 1:
            raise ValueError("interval must be > 0 and max_active at least 1")
        if self.patience is None:
            self.patience = max(60.0, 15 * self.interval)
        self._rng = random.Random(self.seed)

    # --- lifetime ------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="demo-customers")

    async def stop(self) -> None:
        """Cancel the simulation and wait until it has finished."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- the simulation ------------------------------------------------------------------------------

    def plan_arrival(self) -> Arrival:
        """Who comes next. Only arrivals draw from the seeded generator, so with a seed the n-th customer
        is always the same whatever the agents do."""
        media = self._rng.choice((SMS, CHAT))
        nickname = self._rng.choice(NICKNAMES)
        script = self._rng.choice(SCRIPTS)
        queue = self._rng.choice(self.conversations.routing.queue_names())
        return Arrival(media, nickname, script, queue, self._rng.getrandbits(64))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        tick = min(0.25, self.interval / 4)  # how often conversations are looked at
        next_arrival = loop.time()  # the first customer at once: a new user sees an offer as soon as Ready
        while True:
            now = loop.time()
            if now >= next_arrival:
                next_arrival = now + self.interval
                if len(self.customers) < self.max_active:
                    await self._arrive(now)
            for customer in list(self.customers.values()):
                await self._step(customer, loop.time())
            await asyncio.sleep(tick)

    async def _arrive(self, now: float) -> None:
        arrival = self.plan_arrival()
        try:
            ix = await self.conversations.create_inbound(arrival.media, arrival.nickname,
                                                         text=arrival.script.opening, queue=arrival.queue)
        except ContactCenterError as exc:
            log.warning("demo: no new %s customer: %s", arrival.media.name, exc.message)
            return
        except Exception:  # a bug must not end the demo for good: log it, try again next interval
            log.exception("demo: creating a %s customer failed", arrival.media.name)
            return
        self.arrivals += 1
        self.customers[ix.id] = DemoCustomer(arrival.media, ix.id, arrival.nickname, arrival.script,
                                             random.Random(arrival.delay_seed), now)
        log.info("demo: %s customer %s (%s) is waiting in queue %s", arrival.media.name, arrival.nickname,
                 ix.id, arrival.queue)

    async def _step(self, customer: DemoCustomer, now: float) -> None:
        try:
            await self._advance(customer, now)
        except ContactCenterError as exc:
            # Expected races: the agent completed or transferred the chat just before the customer spoke.
            log.info("demo: customer %s (%s) stops: %s", customer.nickname, customer.interaction_id, exc.message)
            self.customers.pop(customer.interaction_id, None)
        except Exception:  # a bug must not end the demo for good: drop this customer, keep the others
            log.exception("demo: customer %s (%s) failed", customer.nickname, customer.interaction_id)
            self.customers.pop(customer.interaction_id, None)

    async def _advance(self, customer: DemoCustomer, now: float) -> None:
        ix = self.conversations.interaction(customer.interaction_id)
        if ix is None or ix.ended or not ix.customer_present:
            self.customers.pop(customer.interaction_id, None)  # completed by the agent, or ended elsewhere
            return
        agents = ix.visible_agents_chatting()
        if agents:
            customer.waiting_since = now  # patience runs only while nobody is talking to the customer
        if customer.action is None:
            if not agents and any(leg.state is LegState.LEFT_CHAT for leg in ix.legs.values()):
                self._plan(customer, "leave", now, 0.1, 0.3)  # the agent left the chat: so does the customer
            elif not agents and now - customer.waiting_since > (self.patience or 0):
                self._plan(customer, "leave", now, 0.0, 0.0)
            else:
                written = self._agent_texts(customer)
                if written > customer.answered:
                    customer.answered = written
                    self._plan(customer, "type", now, 0.2, 0.4)
        if customer.action is None or now < customer.due:
            return
        action, customer.action = customer.action, None
        media, interaction_id = customer.media, customer.interaction_id
        if action == "type":
            await self.conversations.customer_typing(media, interaction_id, True)
            self._plan(customer, "reply", now, 0.1, 0.2)
        elif action == "reply":
            if customer.said < len(customer.script.replies):
                await self.conversations.customer_message(media, interaction_id,
                                                          customer.script.replies[customer.said])
                customer.said += 1
            else:
                await self.conversations.customer_message(media, interaction_id, customer.script.farewell)
                self._plan(customer, "leave", now, 0.2, 0.4)
        else:
            await self.conversations.customer_left(media, interaction_id)
            self.customers.pop(interaction_id, None)
            log.info("demo: customer %s (%s) left", customer.nickname, interaction_id)

    def _plan(self, customer: DemoCustomer, action: str, now: float, low: float, high: float) -> None:
        customer.action = action
        customer.due = now + customer.rng.uniform(low, high) * self.interval

    def _agent_texts(self, customer: DemoCustomer) -> int:
        """Text messages of agents the customer can see: what a customer answers."""
        return sum(1 for m in self.conversations.transcript(customer.media, customer.interaction_id)
                   if m["type"] == MessageType.TEXT.value and m["from"]["type"] == "Agent")


def add_demo_users(users: UserDirectory) -> list[tuple[str, str]]:
    """Add the demo agents and supervisor with fresh passwords; `(user, password)` for each one added.

    A user id or agent id that the users file already has is left alone: its owner keeps their password.
    """
    added = []
    for demo in DEMO_USERS:
        password = secrets.token_urlsafe(12)
        try:
            users.add(demo.user_id, password, roles=demo.roles, first_name=demo.first_name,
                      last_name=demo.last_name, agent_id=demo.agent_id)
        except ValueError as exc:
            log.warning("demo: user %s not added: %s", demo.user_id, exc)
            continue
        added.append((demo.user_id, password))
    return added


DEMO = web.AppKey("demo_customers", CustomerSimulator)


def install_demo(app: web.Application, center: ContactCenter, *, interval: float = 8.0, seed: int | None = None,
                 max_active: int = MAX_ACTIVE) -> list[tuple[str, str]]:
    """Demo users in `center.users` and simulated customers for the app's lifetime.

    Returns the `(user, password)` pairs that were added, for the CLI to print. The simulator is
    `app[DEMO]`. Call after `install_contact_center`.
    """
    simulator = CustomerSimulator(center.conversations, interval=interval, seed=seed, max_active=max_active)
    credentials = add_demo_users(center.users)

    async def start(_: web.Application) -> None:
        simulator.start()

    async def stop(_: web.Application) -> None:
        await simulator.stop()

    app.on_startup.append(start)
    # First in cleanup: the contact center's cleanup closes routing, and a customer arriving after that
    # would start an offer timer nobody cancels.
    app.on_cleanup.insert(0, stop)
    app[DEMO] = simulator
    return credentials
