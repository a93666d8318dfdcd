"""Unit tests for cometd_broker.bayeux: decoding, validation, reply builders, error strings.

Pure tests: no sockets, no event loop. Field requirements follow the spec's meta
channel table (reference section 1.2) and error grammar (section 1.3).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cometd_broker import bayeux
from cometd_broker.bayeux import (
    CHANNEL_MISSING,
    CONNECT,
    DISCONNECT,
    HANDSHAKE,
    HANDSHAKE_DENIED,
    SESSION_UNKNOWN,
    SUBSCRIBE,
    UNSUBSCRIBE,
    UNSUCCESSFUL,
    BodyError,
    advice,
    body_error_reply,
    common_transports,
    decode_body,
    delivered,
    error,
    error_reply,
    handshake_reply,
    new_client_id,
    reply_to,
    subscription_error,
    subscriptions_of,
    unknown_session_reply,
    validate_message,
)
from cometd_broker.channel import is_meta

PACKAGE_DIR = Path(bayeux.__file__).resolve().parent

# code ":" args ":" message, code = 3 digits; message is everything after the second colon.
ERROR_GRAMMAR = re.compile(r"\A(?P<code>\d{3}):(?P<args>[^:]*):(?P<message>.*)\Z", re.DOTALL)


def parse_error(text: str) -> tuple[int, list[str], str]:
    match = ERROR_GRAMMAR.match(text)
    assert match is not None, f"{text!r} does not follow code:args:message"
    args = match["args"].split(",") if match["args"] else []
    return int(match["code"]), args, match["message"]


def code_of(text: str | None) -> int:
    assert text is not None
    return parse_error(text)[0]


HANDSHAKE_OK = {"channel": HANDSHAKE, "version": "1.0", "supportedConnectionTypes": ["long-polling"], "id": "1"}
CONNECT_OK = {"channel": CONNECT, "clientId": "abc", "connectionType": "long-polling", "id": "2"}
SUBSCRIBE_OK = {"channel": SUBSCRIBE, "clientId": "abc", "subscription": "/foo/bar", "id": "3"}
UNSUBSCRIBE_OK = {"channel": UNSUBSCRIBE, "clientId": "abc", "subscription": "/foo/bar", "id": "4"}
DISCONNECT_OK = {"channel": DISCONNECT, "clientId": "abc", "id": "5"}
PUBLISH_OK = {"channel": "/foo/bar", "data": {"x": 1}, "clientId": "abc", "id": "6"}


def without(message: dict, *keys: str) -> dict:
    return {k: v for k, v in message.items() if k not in keys}


# --------------------------------------------------------------------------- decode_body


class TestDecodeBody:
    def test_array_of_objects_is_returned_in_order(self):
        body = [{"channel": "/a"}, {"channel": "/b"}, {"channel": "/c"}]
        assert decode_body(body) == [{"channel": "/a"}, {"channel": "/b"}, {"channel": "/c"}]

    def test_single_object_is_wrapped(self):
        assert decode_body({"channel": "/meta/connect"}) == [{"channel": "/meta/connect"}]

    def test_empty_array_is_tolerated(self):
        # Faye sends [] as a keep-alive (reference 1.6).
        assert decode_body([]) == []

    @pytest.mark.parametrize(
        ("body", "kind"),
        [("hello", "string"), (42, "number"), (1.5, "number"), (None, "null"), (True, "boolean"),
         (False, "boolean")],
    )
    def test_non_array_non_object_body_is_rejected(self, body, kind):
        with pytest.raises(BodyError) as caught:
            decode_body(body)
        assert caught.value.error == f"400::body must be a JSON array of messages or one message object, got {kind}"
        assert caught.value.http_status == 400
        assert str(caught.value) == caught.value.error

    @pytest.mark.parametrize(
        ("element", "kind"),
        [("x", "string"), (1, "number"), (None, "null"), ([], "array"), ([{"channel": "/a"}], "array"),
         (True, "boolean")],
    )
    def test_non_object_element_rejects_whole_body(self, element, kind):
        with pytest.raises(BodyError) as caught:
            decode_body([{"channel": "/a"}, element, {"channel": "/b"}])
        assert caught.value.error == f"400::message 1 must be a JSON object, got {kind}"

    def test_a_batch_up_to_max_batch_passes(self):
        body = [{"channel": "/a"}] * 3
        assert decode_body(body, 3) == body
        assert decode_body({"channel": "/a"}, 1) == [{"channel": "/a"}]

    def test_a_batch_over_max_batch_is_refused_whole(self):
        with pytest.raises(BodyError) as caught:
            decode_body([{}] * 4, 3)
        assert caught.value.error == ("400::too_many_messages (this request carries 4 messages; max_batch is 3: "
                                      "send them in smaller batches)")
        assert caught.value.http_status == 400

    def test_the_batch_size_is_checked_before_the_elements(self):
        # Refused at once, without looking at (or naming) each of the many elements.
        with pytest.raises(BodyError, match="too_many_messages"):
            decode_body([7] * 10, 3)

    def test_first_bad_element_is_reported(self):
        with pytest.raises(BodyError) as caught:
            decode_body([{"channel": "/a"}, {"channel": "/b"}, 7, "x"])
        assert caught.value.error == "400::message 2 must be a JSON object, got number"

    def test_body_error_is_a_value_error(self):
        assert issubclass(BodyError, ValueError)

    def test_body_error_reply_shape(self):
        [reply] = body_error_reply("400::bad")
        assert reply == {"channel": UNSUCCESSFUL, "successful": False, "error": "400::bad",
                         "advice": {"reconnect": "retry", "interval": 0}}


# --------------------------------------------------------------------------- validate_message


class TestValidateValidMessages:
    @pytest.mark.parametrize("message", [HANDSHAKE_OK, CONNECT_OK, SUBSCRIBE_OK, UNSUBSCRIBE_OK, DISCONNECT_OK,
                                         PUBLISH_OK])
    def test_complete_messages_pass(self, message):
        assert validate_message(dict(message)) is None

    def test_minimal_messages_pass(self):
        assert validate_message({"channel": HANDSHAKE, "version": "1.0",
                                 "supportedConnectionTypes": ["websocket", "long-polling"]}) is None
        assert validate_message({"channel": CONNECT, "clientId": "c", "connectionType": "websocket"}) is None
        assert validate_message({"channel": DISCONNECT, "clientId": "c"}) is None
        # A publish MAY omit clientId (reference 1.1).
        assert validate_message({"channel": "/a", "data": 1}) is None

    def test_publish_with_null_data_is_still_a_publish(self):
        assert validate_message({"channel": "/a", "data": None}) is None

    @pytest.mark.parametrize("subscription", ["/foo", "/foo/*", "/foo/**", ["/a", "/b/**"]])
    def test_subscription_name_pattern_or_array(self, subscription):
        assert validate_message({"channel": SUBSCRIBE, "clientId": "c", "subscription": subscription}) is None
        assert validate_message({"channel": UNSUBSCRIBE, "clientId": "c", "subscription": subscription}) is None

    @pytest.mark.parametrize("message_id", ["1", "abc", "", 0, 17])
    def test_string_and_integer_ids_are_accepted(self, message_id):
        assert validate_message({**PUBLISH_OK, "id": message_id}) is None

    def test_service_channel_publish_passes(self):
        assert validate_message({"channel": "/service/echo", "data": "hi", "clientId": "c"}) is None

    def test_connect_with_advice_object_passes(self):
        assert validate_message({**CONNECT_OK, "advice": {"timeout": 0}}) is None

    def test_ext_object_passes(self):
        assert validate_message({**PUBLISH_OK, "ext": {"ack": 3}}) is None


class TestValidateMissingFields:
    @pytest.mark.parametrize("message", [without(m, "channel") for m in
                                         (HANDSHAKE_OK, CONNECT_OK, SUBSCRIBE_OK, DISCONNECT_OK, PUBLISH_OK)])
    def test_missing_channel(self, message):
        assert validate_message(message) == CHANNEL_MISSING == "400::channel_missing"

    def test_empty_message(self):
        assert validate_message({}) == "400::channel_missing"

    @pytest.mark.parametrize("channel", [5, ["/a"], {"x": 1}, True])
    def test_non_string_channel(self, channel):
        assert code_of(validate_message({"channel": channel, "data": 1})) == 400

    def test_handshake_without_version(self):
        assert validate_message(without(HANDSHAKE_OK, "version")) == "400::version_missing"

    @pytest.mark.parametrize("types", [None, "long-polling", [], ["long-polling", 3], {"a": 1}])
    def test_handshake_without_usable_supported_connection_types(self, types):
        message = dict(HANDSHAKE_OK)
        if types is None:
            del message["supportedConnectionTypes"]
        else:
            message["supportedConnectionTypes"] = types
        problem = validate_message(message)
        assert code_of(problem) == 400
        assert "supportedConnectionTypes" in problem

    def test_handshake_does_not_need_client_id(self):
        assert "clientId" not in HANDSHAKE_OK
        assert validate_message(HANDSHAKE_OK) is None

    @pytest.mark.parametrize("base", [CONNECT_OK, SUBSCRIBE_OK, UNSUBSCRIBE_OK, DISCONNECT_OK])
    @pytest.mark.parametrize("client_id", ["<missing>", ""])
    def test_meta_messages_need_a_client_id(self, base, client_id):
        message = without(base, "clientId")
        if client_id != "<missing>":
            message["clientId"] = client_id
        assert validate_message(message) == "401::clientId_missing"

    @pytest.mark.parametrize("base", [CONNECT_OK, SUBSCRIBE_OK, UNSUBSCRIBE_OK, DISCONNECT_OK, PUBLISH_OK])
    @pytest.mark.parametrize(("client_id", "kind"), [(5, "number"), (None, "null"), (["abc"], "array"),
                                                     ({"a": 1}, "object"), (True, "boolean")])
    def test_a_client_id_of_another_type_is_named(self, base, client_id, kind):
        assert validate_message({**base, "clientId": client_id}) == f"400::clientId must be a string, got {kind}"

    def test_connect_without_connection_type(self):
        assert validate_message(without(CONNECT_OK, "connectionType")) == "400::connectionType_missing"

    def test_connect_with_non_string_connection_type(self):
        assert (validate_message({**CONNECT_OK, "connectionType": ["long-polling"]})
                == "400::connectionType must be a string, got array")

    def test_connect_with_non_object_advice(self):
        assert code_of(validate_message({**CONNECT_OK, "advice": "timeout=0"})) == 400

    @pytest.mark.parametrize("base", [SUBSCRIBE_OK, UNSUBSCRIBE_OK])
    @pytest.mark.parametrize("subscription", ["<missing>", []])
    def test_subscribe_without_subscription(self, base, subscription):
        message = without(base, "subscription")
        if subscription != "<missing>":
            message["subscription"] = subscription
        assert validate_message(message) == "403::subscription_missing"

    @pytest.mark.parametrize("base", [SUBSCRIBE_OK, UNSUBSCRIBE_OK])
    @pytest.mark.parametrize(("subscription", "got"), [
        (None, "null"), (7, "number"), ({"/a": True}, "object"), (False, "boolean"),
        ([1], "an array holding number"), (["/a", None], "an array holding null")])
    def test_subscription_of_another_type_is_named(self, base, subscription, got):
        problem = validate_message({**base, "subscription": subscription})
        expected = "400::subscription must be a channel name or an array of channel names, got "
        assert problem == expected + got

    def test_publish_without_data(self):
        problem = validate_message(without(PUBLISH_OK, "data"))
        code, args, text = parse_error(problem)
        assert code == 400
        assert args == ["/foo/bar"]
        assert text.startswith("data_missing")

    def test_publish_with_non_string_client_id(self):
        assert code_of(validate_message({**PUBLISH_OK, "clientId": 12})) == 400

    @pytest.mark.parametrize("ext", ["x", [1], 3])
    def test_non_object_ext(self, ext):
        assert code_of(validate_message({**PUBLISH_OK, "ext": ext})) == 400


class TestValidateChannels:
    @pytest.mark.parametrize("channel", ["/foo/*", "/foo/**", "/*", "/**"])
    def test_wildcard_publish_is_rejected(self, channel):
        problem = validate_message({"channel": channel, "data": 1})
        code, args, text = parse_error(problem)
        assert code == 405
        assert args == [channel]
        assert text.startswith("channel_invalid")

    @pytest.mark.parametrize("channel", ["/a//b", "/a/", "/", "foo", "", "/**/foo", "/foo/*/bar", "/a b",
                                         "/a/b#c", "/é"])
    def test_invalid_publish_channel_is_rejected(self, channel):
        problem = validate_message({"channel": channel, "data": 1})
        assert code_of(problem) == 405
        assert "channel_invalid" in problem

    @pytest.mark.parametrize("channel", ["/meta/foo", "/meta/handshake/x", "/meta/", "/meta/*", "/meta/**",
                                         "/meta/Connect"])
    def test_unknown_meta_channels_are_rejected(self, channel):
        problem = validate_message({"channel": channel, "clientId": "c", "data": 1})
        assert code_of(problem) == 405
        assert "channel_invalid" in problem

    def test_every_meta_channel_is_refused_as_a_publish(self):
        # `is_meta` counts "/meta" itself as a meta channel and `subscription_error` refuses to
        # subscribe it, so a client must not be able to publish on it either (it would otherwise
        # be fanned out to `/**` subscribers as an ordinary broadcast).
        for channel in ("/meta", "/meta/x", "/meta/x/y"):
            assert is_meta(channel)
            problem = validate_message({"channel": channel, "clientId": "c", "data": 1})
            assert problem is not None, f"publish on {channel} was accepted"
            assert code_of(problem) in (403, 405)


ID_INVALID = "400::message_id_invalid (id must be a string or an integer, got {})"


class TestValidateIds:
    @pytest.mark.parametrize(("message_id", "kind"), [(1.5, "number"), (["1"], "array"), ({"id": 1}, "object")])
    def test_bad_id_types(self, message_id, kind):
        for base in (HANDSHAKE_OK, CONNECT_OK, SUBSCRIBE_OK, DISCONNECT_OK, PUBLISH_OK):
            assert validate_message({**base, "id": message_id}) == ID_INVALID.format(kind)

    @pytest.mark.parametrize("message_id", [True, False])
    def test_boolean_ids_are_rejected(self, message_id):
        # The spec's id is alphanumeric; JSON true/false is not an id (bool is a subclass of int in Python).
        assert validate_message({**PUBLISH_OK, "id": message_id}) == ID_INVALID.format("boolean")

    def test_a_null_id_is_a_wrong_type_not_an_absent_id(self):
        assert validate_message({**PUBLISH_OK, "id": None}) == ID_INVALID.format("null")

    @pytest.mark.parametrize("message_id", ["7", 7, -1, 2**63])
    def test_string_and_integer_ids_pass(self, message_id):
        assert validate_message({**PUBLISH_OK, "id": message_id}) is None


class TestValidateFieldTypes:
    """Every field the broker reads is type-checked: a wrong type (null included) is a 400 naming the field."""

    @pytest.mark.parametrize(("base", "field", "value", "error"), [
        (PUBLISH_OK, "channel", None, "400::channel must be a string, got null"),
        (HANDSHAKE_OK, "version", 1.0, "400::version must be a string, got number"),
        (HANDSHAKE_OK, "minimumVersion", None, "400::minimumVersion must be a string, got null"),
        (CONNECT_OK, "connectionType", None, "400::connectionType must be a string, got null"),
        (CONNECT_OK, "ext", None, "400::ext must be an object, got null"),
        (PUBLISH_OK, "ext", [], "400::ext must be an object, got array"),
        (HANDSHAKE_OK, "advice", [], "400::advice must be an object, got array"),
        (CONNECT_OK, "advice", None, "400::advice must be an object, got null"),
        (CONNECT_OK, "advice", {"timeout": "x"}, "400::advice.timeout must be a number of milliseconds, got string"),
        (CONNECT_OK, "advice", {"timeout": None}, "400::advice.timeout must be a number of milliseconds, got null"),
        (CONNECT_OK, "advice", {"timeout": True},
         "400::advice.timeout must be a number of milliseconds, got boolean"),
        (CONNECT_OK, "advice", {"timeout": -1}, "400::advice.timeout must be >= 0 milliseconds"),
        (HANDSHAKE_OK, "ext", {"ack": 1}, "400::ext.ack must be true or false on a /meta/handshake, got number"),
        (CONNECT_OK, "ext", {"ack": "3"},
         "400::ext.ack must be an integer (the last batch received) on a /meta/connect, got string"),
        (CONNECT_OK, "ext", {"ack": True},
         "400::ext.ack must be an integer (the last batch received) on a /meta/connect, got boolean"),
        (HANDSHAKE_OK, "ext", {"replay": []},
         "400::ext.replay must be true, false or an object of channel: event id, got array"),
        (SUBSCRIBE_OK, "ext", {"replay": True},
         "400::ext.replay must be an object of channel: event id, got boolean"),
        (SUBSCRIBE_OK, "ext", {"replay": {"/foo/bar": "5"}},
         "400:/foo/bar:ext.replay of a channel must be an event id, -1 (new events only) or -2 (all retained), "
         "got string"),
        (HANDSHAKE_OK, "ext", {"replay": {"/foo/bar": -3}},
         "400:/foo/bar:ext.replay of a channel must be an event id, -1 (new events only) or -2 (all retained), "
         "got -3"),
    ])
    def test_wrong_type_is_named(self, base, field, value, error):
        assert validate_message({**base, field: value}) == error

    @pytest.mark.parametrize(("base", "field", "value"), [
        (HANDSHAKE_OK, "ext", {"ack": True, "replay": {"/foo/bar": -2}}),
        (HANDSHAKE_OK, "ext", {"replay": False}),
        (HANDSHAKE_OK, "advice", {"timeout": 60000, "interval": 0}),
        (CONNECT_OK, "ext", {"ack": -1}),
        (CONNECT_OK, "advice", {"timeout": 2.5}),
        (SUBSCRIBE_OK, "ext", {"replay": {"/foo/bar": 41}, "ack": "ignored: not read on a subscribe"}),
        (UNSUBSCRIBE_OK, "ext", {"replay": "ignored: not read on an unsubscribe"}),
        (HANDSHAKE_OK, "clientId", None),  # a handshake's clientId is not read
    ])
    def test_what_real_clients_send_passes(self, base, field, value):
        assert validate_message({**base, field: value}) is None


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["channel", "id", "clientId", "data", "ext", "version", "supportedConnectionTypes",
                     "connectionType", "subscription", "advice"]),
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
              st.sampled_from([HANDSHAKE, CONNECT, SUBSCRIBE, UNSUBSCRIBE, DISCONNECT, "/a", "/a/*"]),
              st.lists(st.text(max_size=4), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                          max_size=2)),
))
def test_validate_never_raises_and_errors_follow_grammar(message):
    problem = validate_message(message)
    if problem is not None:
        parse_error(problem)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ab:", min_size=1, max_size=4), min_size=1, max_size=3))
def test_error_args_never_break_the_grammar(segments):
    # Channel segments may contain ':' (channel.py allows it for e-mail-like ids). When such a
    # name is put in the error's args field the string must still split into code:args:message.
    channel = "/" + "/".join(segments) + "/*"
    problem = validate_message({"channel": channel, "data": 1})
    code, _args, text = parse_error(problem)
    assert code == 405
    assert text.startswith("channel_invalid"), f"args leaked into the message part of {problem!r}"


# --------------------------------------------------------------------------- subscriptions


class TestSubscriptions:
    def test_subscriptions_of(self):
        assert subscriptions_of({"subscription": "/a"}) == ["/a"]
        assert subscriptions_of({"subscription": ["/a", "/b/*"]}) == ["/a", "/b/*"]
        assert subscriptions_of({}) is None
        assert subscriptions_of({"subscription": []}) is None
        assert subscriptions_of({"subscription": ["/a", None]}) is None

    @pytest.mark.parametrize("name", ["/a", "/a/*", "/a/**", "/**", "/service/x", "/service/**"])
    def test_valid_subscription(self, name):
        assert subscription_error(name) is None

    @pytest.mark.parametrize("name", ["/meta/connect", "/meta/**", "/meta/*", "/meta"])
    def test_meta_subscription_is_refused(self, name):
        problem = subscription_error(name)
        code, args, text = parse_error(problem)
        assert code == 403
        assert args == [name]
        assert text.startswith("subscription_invalid")

    @pytest.mark.parametrize("name", ["a", "/a//b", "/**/a", "/a/*/b", "/a b", "/"])
    def test_invalid_subscription_is_refused(self, name):
        problem = subscription_error(name)
        assert code_of(problem) == 405
        assert "channel_invalid" in problem


# --------------------------------------------------------------------------- replies


class TestReplies:
    @pytest.mark.parametrize("message_id", ["7", "", 0, 42, "abc"])
    def test_reply_to_echoes_id(self, message_id):
        reply = reply_to({"channel": CONNECT, "id": message_id})
        assert reply == {"channel": CONNECT, "successful": True, "id": message_id}

    def test_reply_to_without_id_has_no_id(self):
        assert reply_to({"channel": DISCONNECT}) == {"channel": DISCONNECT, "successful": True}

    def test_reply_to_failure(self):
        assert reply_to({"channel": "/a", "id": "1"}, successful=False)["successful"] is False

    @pytest.mark.parametrize("message", [{}, {"channel": 5}, {"channel": None, "id": "9"}])
    def test_reply_to_without_usable_channel(self, message):
        reply = reply_to(message)
        assert reply["channel"] == UNSUCCESSFUL
        assert reply.get("id") == message.get("id")

    def test_reply_to_every_meta_channel_carries_successful_and_id(self):
        for message in (HANDSHAKE_OK, CONNECT_OK, SUBSCRIBE_OK, UNSUBSCRIBE_OK, DISCONNECT_OK, PUBLISH_OK):
            reply = reply_to(message)
            assert reply["successful"] is True
            assert reply["id"] == message["id"]
            assert reply["channel"] == message["channel"]

    def test_error_reply(self):
        reply = error_reply(CONNECT_OK, "402::session_unknown", advice("handshake", 0))
        assert reply == {"channel": CONNECT, "successful": False, "id": "2", "error": "402::session_unknown",
                         "clientId": "abc", "advice": {"reconnect": "handshake", "interval": 0}}

    def test_error_reply_without_advice_or_client_id(self):
        reply = error_reply({"channel": HANDSHAKE, "id": "x"}, HANDSHAKE_DENIED)
        assert reply == {"channel": HANDSHAKE, "successful": False, "id": "x", "error": "403::handshake_denied"}

    @pytest.mark.parametrize("channel", [SUBSCRIBE, UNSUBSCRIBE])
    def test_subscribe_error_reply_echoes_subscription(self, channel):
        reply = error_reply({"channel": channel, "clientId": "c", "subscription": ["/a", "/b"], "id": "1"},
                            "403::denied")
        assert reply["subscription"] == ["/a", "/b"]
        assert reply["successful"] is False

    def test_publish_error_reply_has_no_subscription(self):
        reply = error_reply({"channel": "/a", "subscription": "/x", "id": "1"}, "403::denied")
        assert "subscription" not in reply

    def test_unknown_session_reply(self):
        reply = unknown_session_reply(CONNECT_OK)
        assert reply["error"] == SESSION_UNKNOWN == "402::session_unknown"
        assert reply["advice"] == {"reconnect": "handshake", "interval": 0}
        assert reply["successful"] is False
        assert reply["id"] == "2"

    def test_unknown_session_reply_with_detail(self):
        reply = unknown_session_reply(SUBSCRIBE_OK, "expired")
        code, args, text = parse_error(reply["error"])
        assert (code, args) == (402, [])
        assert text == "session_unknown (expired)"
        assert reply["advice"]["reconnect"] == "handshake"

    def test_handshake_reply(self):
        reply = handshake_reply(HANDSHAKE_OK, "c1", ["websocket", "long-polling"],
                                advice("retry", 0, 25000))
        assert reply == {
            "channel": HANDSHAKE, "successful": True, "id": "1", "version": "1.0", "minimumVersion": "1.0",
            "supportedConnectionTypes": ["websocket", "long-polling"], "clientId": "c1",
            "advice": {"reconnect": "retry", "interval": 0, "timeout": 25000},
        }

    def test_handshake_reply_without_id(self):
        assert "id" not in handshake_reply(without(HANDSHAKE_OK, "id"), "c", ["long-polling"], advice("retry", 0))

    def test_advice(self):
        assert advice("retry", 0) == {"reconnect": "retry", "interval": 0}
        assert advice("retry", 5, 100, maxInterval=10000) == {"reconnect": "retry", "interval": 5, "timeout": 100,
                                                              "maxInterval": 10000}


class TestDelivered:
    def test_minimal(self):
        assert delivered("/a/b", {"x": 1}) == {"channel": "/a/b", "data": {"x": 1}}

    def test_with_id_and_ext(self):
        assert delivered("/a", 1, "m1", {"ack": 3}) == {"channel": "/a", "data": 1, "id": "m1", "ext": {"ack": 3}}

    def test_empty_ext_is_omitted(self):
        assert "ext" not in delivered("/a", 1, ext={})

    def test_data_null_is_kept(self):
        assert delivered("/a", None) == {"channel": "/a", "data": None}

    @settings(max_examples=200, deadline=None)
    @given(channel=st.sampled_from(["/a", "/a/b", "/service/x"]), data=st.none() | st.integers() | st.text(),
           message_id=st.none() | st.text(max_size=5) | st.integers(),
           ext=st.none() | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
    def test_never_carries_client_id(self, channel, data, message_id, ext):
        message = delivered(channel, data, message_id, ext)
        assert "clientId" not in message
        assert set(message) <= {"channel", "data", "id", "ext"}
        assert message["channel"] == channel
        assert message["data"] == data

    def test_signature_cannot_take_a_client_id(self):
        with pytest.raises(TypeError):
            delivered("/a", 1, clientId="secret")  # type: ignore[call-arg]


# --------------------------------------------------------------------------- error strings, ids, transports


class TestErrorStrings:
    def test_error_without_args(self):
        assert error(401, "No client ID") == "401::No client ID"

    def test_error_with_args(self):
        assert error(403, "Subscription denied", "xj3sjdsjdsjad", "/foo/bar") == \
            "403:xj3sjdsjdsjad,/foo/bar:Subscription denied"
        assert parse_error(error(404, "Unknown Channel", "/foo/bar")) == (404, ["/foo/bar"], "Unknown Channel")

    @pytest.mark.parametrize("text", [CHANNEL_MISSING, SESSION_UNKNOWN, HANDSHAKE_DENIED])
    def test_constants_follow_grammar(self, text):
        code, args, message = parse_error(text)
        assert 100 <= code <= 999
        assert args == []
        assert message

    def test_constants(self):
        assert CHANNEL_MISSING == "400::channel_missing"
        assert SESSION_UNKNOWN == "402::session_unknown"
        assert HANDSHAKE_DENIED == "403::handshake_denied"

    @settings(max_examples=200, deadline=None)
    @given(code=st.integers(100, 999), message=st.text(min_size=1, max_size=20),
           args=st.lists(st.text(alphabet="abc/_-", min_size=1, max_size=6), max_size=3))
    def test_error_round_trips(self, code, message, args):
        assert parse_error(error(code, message, *args)) == (code, args, message)


class TestClientIds:
    def test_shape(self):
        client_id = new_client_id()
        assert re.fullmatch(r"[0-9a-f]{40}", client_id), client_id
        assert client_id.isalnum()

    def test_unique(self):
        ids = {new_client_id() for _ in range(2000)}
        assert len(ids) == 2000


class TestCommonTransports:
    def test_keeps_server_order(self):
        server = ["websocket", "long-polling", "callback-polling"]
        assert common_transports(["callback-polling", "long-polling", "websocket"], server) == server
        assert common_transports(["long-polling", "websocket"], server) == ["websocket", "long-polling"]

    def test_drops_transports_the_server_does_not_offer(self):
        assert common_transports(["websocket", "eventsource", "long-polling"], ["long-polling"]) == ["long-polling"]

    def test_nothing_in_common(self):
        assert common_transports(["eventsource"], ["websocket", "long-polling"]) == []

    def test_duplicates_in_request_do_not_duplicate(self):
        assert common_transports(["long-polling", "long-polling"], ["websocket", "long-polling"]) == ["long-polling"]

    def test_accepts_iterators(self):
        assert common_transports(iter(["websocket"]), iter(["long-polling", "websocket"])) == ["websocket"]


# --------------------------------------------------------------------------- purity


@pytest.mark.parametrize("module", ["bayeux", "channel"])
def test_source_imports_neither_asyncio_nor_aiohttp(module):
    tree = ast.parse((PACKAGE_DIR / f"{module}.py").read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module)
    assert imported, "parsed no imports at all: the check would be vacuous"
    assert not {name for name in imported if name.split(".")[0] in ("asyncio", "aiohttp", "orjson")}


def test_loading_bayeux_and_channel_loads_no_asyncio_or_aiohttp():
    # Load the two modules without the package __init__ (which pulls in the aiohttp app) and
    # look at everything that ended up in sys.modules, transitive imports included.
    code = f"""
import sys, types
assert "asyncio" not in sys.modules
package = types.ModuleType("cometd_broker")
package.__path__ = [{str(PACKAGE_DIR)!r}]
sys.modules["cometd_broker"] = package
import cometd_broker.bayeux, cometd_broker.channel
assert cometd_broker.bayeux.decode_body([]) == []
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in ("asyncio", "aiohttp"))))
"""
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
