"""Debugging tools over the event log: `cometd-broker events dump | tail | replay`.

`filters` says which events a command is about, `reader` reads them from a log in bounded pages (or
follows new ones), `sinks` re-publishes them, `commands` ties these to the command line. The admin
HTTP API (`cometd_broker.admin`) uses the same filters and reader.
"""
