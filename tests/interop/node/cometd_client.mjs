// The official CometD JavaScript client (npm `cometd`), run in Node through
// `cometd-nodejs-client`, against a broker URL. Driven by tests/interop/test_cometd_js.py.
//
//   node cometd_client.mjs --url=http://127.0.0.1:PORT/cometd --scenario=NAME [options]
//
// Options: --transport=long-polling|websocket (only that transport is registered, so
// there is no silent fallback), --channel=/interop/x, --count=N, --user=U --password=P,
// --expect=success|denied (handshake scenario), --deadline-ms=20000, --content-length=true (request
// bodies with a Content-Length, as browsers send them, instead of chunked).
//
// Scenarios:
//   roundtrip  handshake, subscribe, publish --count messages from this client, receive all
//              of them, wait for every publish ack, unsubscribe, disconnect.
//   listen     subscribe in a /meta/handshake listener (re-subscribing after every
//              re-handshake, the documented CometD pattern); print "subscribe" each time;
//              exit 0 after --count messages were received, disconnecting first.
//   publish    handshake, publish --count messages {seq, from:"cometd"}, wait for the acks,
//              disconnect.
//   handshake  one handshake (with --user/--password in ext.authentication when given);
//              exit 0 when its outcome is --expect.
//   tabs       --clients CometD objects sharing one cookie jar (tabs of one browser), each
//              receiving --count messages; --stagger=true opens them one after the other.
//   ack-listen the official AckExtension registered (`cometd.registerExtension("ack", ...)`),
//              subscribe from the /meta/handshake listener, print "message" {seq} for every
//              message received; after --count messages print "done" {seqs, handshakes}, keep
//              listening --linger-ms (default 500) so late duplicates would show, then exit 0
//              without a disconnect (the network may be failing on purpose).
//
// cometd-nodejs-client 2.x and cometd 9.x are ES modules only, hence `import`, as in the
// adapter's README (`require()` of them works only on Node >= 20.19 / 22.12).
//
// stdout: one JSON object per line (see common.mjs); exit 0 = scenario passed.

import {Console} from "node:console";
import {adapt} from "cometd-nodejs-client";
import {armDeadline, emit, fail, finish, installCrashHandlers, integer, parseArgs, required} from "./common.mjs";

installCrashHandlers();
const options = parseArgs();
const url = required(options, "url");
const scenario = required(options, "scenario");
const transport = options.transport || "long-polling";
const channel = options.channel || "/interop/cometd";
const count = integer(options, "count", 1);
armDeadline(integer(options, "deadline-ms", 20000), () => ({scenario, transport}));

// The adapter installs XMLHttpRequest and WebSocket (from `ws`) on a global `window`.
adapt();
// --content-length=true: send every request body with a Content-Length, as browsers do. The
// adapter's XMLHttpRequest writes the body with Node's http.request, which then sends it chunked;
// a browser's long-polls are plain Content-Length POSTs (the broker's lean path serves those itself).
if (options["content-length"] === "true") {
    const Base = window.XMLHttpRequest;
    window.XMLHttpRequest = class extends Base {
        send(data) {
            this.setRequestHeader("Content-Length", String(Buffer.byteLength(data || "")));
            super.send(data);
        }
    };
}
// CometD logs through window.console; keep stdout for our JSON lines.
window.console = new Console({stdout: process.stderr, stderr: process.stderr});
const {CometD} = await import("cometd");
const {AckExtension} = await import("cometd");

/** A CometD object restricted to --transport. All share the adapter's cookie jar, like the
 * tabs of one browser share its cookies (and so the broker's BAYEUX_BROWSER cookie). */
function newCometD(name, tab) {
    const instance = new CometD(name);
    // Every /meta/connect sent is an observation (the tests wait for one to be held).
    instance.registerExtension("interop-observer", {
        outgoing(message) {
            if (message.channel === "/meta/connect") {
                const current = instance.getTransport();
                emit("connect_sent", {id: message.id, clientId: message.clientId, tab,
                    transport: current ? current.type : null});
            }
            return message;
        },
    });
    for (const type of instance.getTransportTypes()) {
        if (type !== transport) {
            instance.unregisterTransport(type);
        }
    }
    if (instance.getTransportTypes().length !== 1) {
        fail(`transport ${transport} is not available in this CometD client`, {available: instance.getTransportTypes()});
    }
    instance.configure({
        url,
        logLevel: options["log-level"] || "warn",
        // Fast retries: the tests restart brokers and expect the client back within seconds.
        backoffIncrement: integer(options, "backoff-increment", 100),
        maxBackoff: integer(options, "max-backoff", 500),
        maxNetworkDelay: integer(options, "max-network-delay", 5000),
    });
    return instance;
}

const cometd = newCometD("default", 0);

/** The fields of a reply worth asserting on. */
function summary(message) {
    const fields = {};
    for (const name of ["channel", "successful", "error", "advice", "subscription", "clientId", "id", "ext",
        "reestablish"]) {
        if (message[name] !== undefined) {
            fields[name] = message[name];
        }
    }
    if (message.failure) {
        fields.failure = {reason: message.failure.reason, httpCode: message.failure.httpCode};
    }
    return fields;
}

function currentTransport() {
    const current = cometd.getTransport();
    return current ? current.type : null;
}

/** Every meta reply is an observation. */
function observeMeta(instance, tab) {
    for (const meta of ["/meta/handshake", "/meta/connect", "/meta/subscribe", "/meta/unsubscribe",
        "/meta/disconnect"]) {
        instance.addListener(meta, (message) => {
            const current = instance.getTransport();
            emit("meta", {...summary(message), transport: current ? current.type : null, tab});
        });
    }
}

observeMeta(cometd, 0);

function disconnectAndFinish(code, fields = {}) {
    cometd.disconnect((reply) => {
        emit("disconnect", summary(reply));
        finish(reply.successful ? code : 1, fields);
    });
}

const scenarios = {
    // --clients CometD objects in this process, like tabs of one browser: they share one cookie
    // jar. Each subscribes from its handshake callback (re-run on a re-handshake) and must
    // receive --count messages; then all disconnect. With --stagger each tab handshakes once
    // the previous one has its handshake reply (and so the browser cookie); without it, all
    // handshakes leave at once, as when a browser restores several tabs.
    tabs() {
        const tabs = integer(options, "clients", 2);
        const stagger = options.stagger === "true";
        let finished = 0;
        const open = (tab) => {
            const instance = tab === 0 ? cometd : newCometD(`tab${tab}`, tab);
            if (tab > 0) {
                observeMeta(instance, tab);
            }
            const received = [];
            let opened = false;
            instance.handshake((reply) => {
                emit("handshake", {...summary(reply), tab});
                if (stagger && !opened && tab + 1 < tabs) {
                    open(tab + 1);
                }
                opened = true;
                instance.subscribe(channel, (message) => {
                    received.push(message.data);
                    emit("message", {tab, channel: message.channel, data: message.data});
                    if (received.length === count) {
                        instance.disconnect((disconnectReply) => {
                            emit("disconnect", {...summary(disconnectReply), tab});
                            if (++finished === tabs) {
                                finish(0);
                            }
                        });
                    }
                }, (subscribeReply) => emit("subscribe", {...summary(subscribeReply), tab}));
            });
        };
        if (stagger) {
            open(0);
        } else {
            for (let tab = 0; tab < tabs; ++tab) {
                open(tab);
            }
        }
    },

    roundtrip() {
        const received = [];
        const acks = [];
        let subscription = null;
        const maybeDone = () => {
            if (received.length < count || acks.length < count) {
                return;
            }
            const inOrder = received.every((seq, index) => seq === index);
            const acked = acks.every((ack) => ack.successful === true);
            emit("done", {received, acked_ok: acks.filter((ack) => ack.successful).length, in_order: inOrder});
            cometd.unsubscribe(subscription, (reply) => {
                emit("unsubscribe", summary(reply));
                if (!reply.successful) {
                    fail("unsubscribe failed", summary(reply));
                    return;
                }
                disconnectAndFinish(inOrder && acked ? 0 : 1);
            });
        };
        cometd.handshake((reply) => {
            emit("handshake", {...summary(reply), transport: currentTransport()});
            if (!reply.successful) {
                fail("handshake failed", summary(reply));
                return;
            }
            subscription = cometd.subscribe(channel, (message) => {
                emit("message", {channel: message.channel, data: message.data});
                received.push(message.data.seq);
                maybeDone();
            }, (subscribeReply) => {
                emit("subscribe", summary(subscribeReply));
                if (!subscribeReply.successful) {
                    fail("subscribe failed", summary(subscribeReply));
                    return;
                }
                for (let seq = 0; seq < count; ++seq) {
                    cometd.publish(channel, {seq, text: `message ${seq}`}, (ack) => {
                        emit("publish_ack", {seq, ...summary(ack)});
                        acks.push(ack);
                        maybeDone();
                    });
                }
            });
        });
    },

    listen() {
        let handshakes = 0;
        const received = [];
        cometd.addListener("/meta/handshake", (reply) => {
            if (!reply.successful) {
                return;
            }
            const number = ++handshakes;
            // Subscriptions do not survive a re-handshake: renew them here, in a batch.
            cometd.batch(() => {
                cometd.subscribe(channel, (message) => {
                    emit("message", {channel: message.channel, data: message.data, handshake: number});
                    received.push(message.data);
                    if (received.length === count) {
                        disconnectAndFinish(0, {handshakes});
                    }
                }, (subscribeReply) => {
                    emit("subscribe", {...summary(subscribeReply), handshake: number, transport: currentTransport()});
                });
            });
        });
        cometd.handshake((reply) => {
            emit("handshake", {...summary(reply), transport: currentTransport()});
        });
    },

    publish() {
        const acks = [];
        cometd.handshake((reply) => {
            emit("handshake", {...summary(reply), transport: currentTransport()});
            if (!reply.successful) {
                fail("handshake failed", summary(reply));
                return;
            }
            cometd.batch(() => {
                for (let seq = 0; seq < count; ++seq) {
                    cometd.publish(channel, {seq, from: "cometd"}, (ack) => {
                        emit("publish_ack", {seq, ...summary(ack)});
                        acks.push(ack);
                        if (acks.length === count) {
                            disconnectAndFinish(acks.every((a) => a.successful) ? 0 : 1);
                        }
                    });
                }
            });
        });
    },

    handshake() {
        const expect = options.expect || "success";
        const props = {};
        if (options.user !== undefined || options.password !== undefined) {
            props.ext = {authentication: {user: options.user, password: options.password}};
        }
        cometd.handshake(props, (reply) => {
            emit("handshake", {...summary(reply), transport: currentTransport()});
            const outcome = reply.successful ? "success" : "denied";
            if (reply.successful) {
                // Not from inside the handshake callback: CometD treats "disconnecting" as
                // disconnected when the callback returns and aborts the transport, failing the
                // /meta/disconnect just sent. Disconnect once the first /meta/connect is answered.
                const connected = cometd.addListener("/meta/connect", (connect) => {
                    if (connect.successful) {
                        cometd.removeListener(connected);
                        disconnectAndFinish(outcome === expect ? 0 : 1, {outcome});
                    }
                });
            } else {
                // A denial carries advice reconnect=none: the client must not retry on its own.
                // Give it a moment to prove that, then report.
                setTimeout(() => {
                    emit("status", {status: cometd.getStatus()});
                    finish(outcome === expect ? 0 : 1, {outcome});
                }, integer(options, "linger-ms", 300));
            }
        });
    },
};

// Acknowledged delivery (tests/interop/test_ack_chaos.py): the connection is cut while
// messages flow; what arrives here must be every seq exactly once, in order.
scenarios["ack-listen"] = function ackListen() {
    cometd.registerExtension("ack", new AckExtension());
    const seqs = [];
    let handshakes = 0;
    let done = false;
    cometd.addListener("/meta/handshake", (reply) => {
        emit("handshake", {...summary(reply), transport: currentTransport()});
        if (!reply.successful) {
            return;
        }
        const number = ++handshakes;
        cometd.subscribe(channel, (message) => {
            const seq = message.data && message.data.seq;
            seqs.push(seq);
            emit("message", {seq, handshake: number});
            if (!done && seqs.length >= count) {
                done = true;
                emit("done", {seqs, handshakes});
                setTimeout(() => finish(0, {received: seqs.length, handshakes}),
                    integer(options, "linger-ms", 500));
            }
        }, (subscribeReply) => {
            emit("subscribe", {...summary(subscribeReply), handshake: number, transport: currentTransport()});
        });
    });
    cometd.handshake();
};

const run = scenarios[scenario];
if (!run) {
    fail(`unknown scenario ${scenario}`, {known: Object.keys(scenarios)});
} else {
    emit("start", {scenario, transport, url, channel, count});
    run();
}
