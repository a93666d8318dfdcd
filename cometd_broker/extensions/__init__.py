"""Bayeux extensions implemented by the server: message acknowledgement (ack) and replay."""
