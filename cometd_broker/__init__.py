"""A Bayeux 1.0 / CometD-compatible server on aiohttp."""

from .app import create_app
from .broker import Broker
from .config import BrokerConfig
from .security import (
    AuthenticationError,
    ChannelAuthorizer,
    ChannelRule,
    CredentialsAuthenticator,
    HandshakeRequest,
    Principal,
)
from .session import ServerSession
from .version import __version__

__all__ = [
    "AuthenticationError",
    "Broker",
    "BrokerConfig",
    "ChannelAuthorizer",
    "ChannelRule",
    "CredentialsAuthenticator",
    "HandshakeRequest",
    "Principal",
    "ServerSession",
    "__version__",
    "create_app",
]
