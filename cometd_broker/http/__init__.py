"""aiohttp transports: they decode bytes into messages for the Broker and write its replies."""
