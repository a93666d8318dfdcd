"""Contact-center services on top of cometd_broker: the GWS v2 agent API and the Huawei agent gateway.

Each module owns one family of /v2/me/... channels: the REST operations that change its resources and the
events it publishes. The broker is used only through its public API (publish_to_user, principal lookup).
"""
