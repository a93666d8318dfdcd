// Faye's Node client (npm `faye`, `Faye.Client`) against a broker URL.
// Driven by tests/interop/test_faye_client.py.
//
//   node faye_client.mjs --url=http://127.0.0.1:PORT/cometd --scenario=NAME [options]
//
// Options: --transport=long-polling|websocket (Faye always handshakes over HTTP, then
// switches to the best type both sides offer; with long-polling, websocket is disabled),
// --channel, --count, --publish=sequential|burst (see publishAll), --deadline-ms=20000.
//
// Scenarios:
//   roundtrip  subscribe, publish --count messages from this client, receive all of them in
//              order, wait for every publish ack, unsubscribe, disconnect.
//   listen     subscribe once (Faye renews subscriptions itself after a re-handshake);
//              exit 0 after --count messages were received, disconnecting first.
//   publish    publish --count messages {seq, from:"faye"}, wait for the acks, disconnect.
//
// An extension reports every meta reply ("meta" lines) and the connectionType of every
// /meta/connect sent ("connect_sent" lines), so the tests can see the transport in use.

import faye from "faye";
import {armDeadline, emit, fail, finish, installCrashHandlers, integer, parseArgs, required} from "./common.mjs";

installCrashHandlers();
const options = parseArgs();
const url = required(options, "url");
const scenario = required(options, "scenario");
const transport = options.transport || "long-polling";
const channel = options.channel || "/interop/faye";
const count = integer(options, "count", 1);
armDeadline(integer(options, "deadline-ms", 20000), () => ({scenario, transport}));

if (!["long-polling", "websocket"].includes(transport)) {
    fail(`unsupported --transport=${transport}`);
}

// retry: seconds between resends of a message whose request failed (default 5 s).
const client = new faye.Client(url, {retry: Number(options.retry || "0.2")});
if (transport === "long-polling") {
    client.disable("websocket");
}

const handshakes = [];
client.addExtension({
    outgoing(message, callback) {
        if (message.channel === "/meta/connect") {
            emit("connect_sent", {id: message.id, connectionType: message.connectionType, clientId: message.clientId});
        }
        callback(message);
    },
    incoming(message, callback) {
        if (message.channel && message.channel.startsWith("/meta/")) {
            const fields = {};
            for (const name of ["channel", "successful", "error", "advice", "subscription", "clientId", "id",
                "supportedConnectionTypes"]) {
                if (message[name] !== undefined) {
                    fields[name] = message[name];
                }
            }
            emit("meta", fields);
            if (message.channel === "/meta/handshake" && message.successful) {
                handshakes.push(message.clientId);
            }
        }
        callback(message);
    },
});
client.on("transport:down", () => emit("transport_down"));
client.on("transport:up", () => emit("transport_up"));

function errorText(error) {
    return error && (error.message || String(error));
}

/**
 * Publish --count messages made by `data(seq)`; `settled(seq, {successful})` on each reply.
 * --publish=sequential (default) sends each publish after the previous one was acknowledged:
 * the only way a Faye client can ask for ordering, because its HTTP transport sends every
 * batch of at most 2048 bytes as its own request at once, so a burst of publishes travels in
 * concurrent requests that the server may receive in any order. --publish=burst sends all
 * at once.
 */
function publishAll(data, settled) {
    const burst = options.publish === "burst";
    const publishOne = (seq) => {
        if (seq >= count) {
            return;
        }
        client.publish(channel, data(seq)).then(() => {
            emit("publish_ack", {seq, successful: true});
            settled(seq, {successful: true});
            if (!burst) {
                publishOne(seq + 1);
            }
        }, (error) => {
            emit("publish_ack", {seq, successful: false, error: errorText(error)});
            settled(seq, {successful: false});
            if (!burst) {
                publishOne(seq + 1);
            }
        });
    };
    if (burst) {
        for (let seq = 0; seq < count; ++seq) {
            publishOne(seq);
        }
    } else {
        publishOne(0);
    }
}

function disconnectAndFinish(code, fields = {}) {
    const done = client.disconnect();
    if (!done) {
        // disconnect() returns nothing when the client is not connected.
        finish(code, {...fields, disconnected: false});
        return;
    }
    done.then(() => {
        emit("disconnect", {successful: true});
        finish(code, {...fields, handshakes: handshakes.length});
    }, (error) => {
        emit("disconnect", {successful: false, error: errorText(error)});
        finish(1, fields);
    });
}

const scenarios = {
    roundtrip() {
        const received = [];
        const acks = [];
        let subscription = null;
        const maybeDone = () => {
            if (received.length < count || acks.length < count) {
                return;
            }
            const inOrder = received.every((seq, index) => seq === index);
            const acked = acks.every((ack) => ack.successful);
            emit("done", {received, acked_ok: acks.filter((ack) => ack.successful).length, in_order: inOrder});
            subscription.cancel();
            // Faye's unsubscribe has no callback; the "meta" line shows its reply. Disconnect
            // after it was answered.
            const waitForUnsubscribe = {
                incoming(message, callback) {
                    callback(message);
                    if (message.channel === "/meta/unsubscribe") {
                        client.removeExtension(waitForUnsubscribe);
                        disconnectAndFinish(inOrder && acked && message.successful ? 0 : 1);
                    }
                },
            };
            client.addExtension(waitForUnsubscribe);
        };
        subscription = client.subscribe(channel, (data) => {
            emit("message", {channel, data});
            received.push(data.seq);
            maybeDone();
        });
        subscription.then(() => {
            emit("subscribe", {successful: true});
            publishAll((seq) => ({seq, text: `message ${seq}`}), (seq, ack) => {
                acks.push(ack);
                maybeDone();
            });
        }, (error) => fail("subscribe failed", {error: errorText(error)}));
    },

    listen() {
        const received = [];
        const subscription = client.subscribe(channel, (data) => {
            emit("message", {channel, data, handshake: handshakes.length});
            received.push(data);
            if (received.length === count) {
                disconnectAndFinish(0);
            }
        });
        subscription.then(() => emit("subscribe", {successful: true}),
            (error) => fail("subscribe failed", {error: errorText(error)}));
    },

    publish() {
        let settled = 0;
        let failed = 0;
        // Publish once connected: publishes queued during Faye's first handshake leave in the
        // wrong order (the first one is re-queued behind the others by Client#connect).
        client.connect(() => {
            publishAll((seq) => ({seq, from: "faye"}), (seq, ack) => {
                failed += ack.successful ? 0 : 1;
                if (++settled === count) {
                    disconnectAndFinish(failed === 0 ? 0 : 1);
                }
            });
        });
    },
};

const run = scenarios[scenario];
if (!run) {
    fail(`unknown scenario ${scenario}`, {known: Object.keys(scenarios)});
} else {
    emit("start", {scenario, transport, url, channel, count});
    run();
}
