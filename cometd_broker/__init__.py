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
    "create_app",
]
__version__ = "0.1.0"
