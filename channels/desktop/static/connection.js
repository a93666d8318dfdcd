// The desktop's CometD connection: the official client with the ack extension (nothing lost across a
// dropped long-poll) and a replay extension (resume from the last event id after a re-handshake, e.g. a
// broker restart). It reports a connection state and de-duplicates events by their replayId.
// Ids belong to the broker's event log: the replay epoch names that log, and is sent back with the ids
// so a broker whose log started over (or was replaced) answers recovered: false instead of resuming.

import {AckExtension, CometD, Extension} from "/desktop/vendor/cometd/cometd.js";

// Every /v2/me channel the desktop listens to. Media channels are replayed from the start of the
// retained history on a first login, so the transcripts of open interactions can be rebuilt; the
// others start with new events and the REST API gives their current state.
export const TOPICS = ["/v2/me/channels", "/v2/me/smssessions", "/v2/me/chats", "/v2/me/interactions",
    "/v2/me/workbins"];
const FROM_START = new Set(["/v2/me/smssessions", "/v2/me/chats", "/v2/me/interactions"]);
const NEW_ONLY = -1;
const ALL_RETAINED = -2;
const CATCH_UP_LIMIT_MS = 10000; // a catch-up whose last event was trimmed meanwhile still ends

class ReplayExtension extends Extension {
    constructor(connection) {
        super();
        this.connection = connection;
    }

    outgoing(message) {
        const epoch = this.connection.epoch;
        if (message.channel === "/meta/handshake") {
            message.ext = {...message.ext, replay: true};
        } else if (message.channel === "/meta/subscribe") {
            const channel = message.subscription;
            message.ext = {...message.ext, replay: {[channel]: this.connection.resumeFrom(channel)}};
            if (typeof epoch === "string") message.ext.replayEpoch = epoch; // the log our ids come from
        }
        return message;
    }

    incoming(message) {
        const channel = message.channel;
        if (channel === "/meta/subscribe") {
            if (message.successful) this.connection.subscribed(message.subscription, message.ext?.replay);
            return message;
        }
        if (channel.startsWith("/meta/")) return message;
        const id = message.ext?.replayId;
        if (typeof id !== "number") return message;
        return this.connection.admit(channel, id) ? message : null; // null: the client drops it
    }
}

export class Connection {
    #cometd = new CometD("agent-desktop");
    #connected = false;
    #everConnected = false;
    #handshakes = 0;
    #pending = new Set(); // subscriptions not yet confirmed since the last handshake
    #catchingUp = new Map(); // channel -> the newest id the server had when we subscribed
    #catchUpTimer = null;
    #gaps = [];
    #stopped = false;

    // positions: {channel: last replayId handled}, owned (and persisted) by the caller; epoch: the replay
    // epoch of the log they come from (null: not known yet), persisted through onEpoch.
    // token: a JWT sent in the handshake's ext.authentication; without it the login cookie authenticates.
    constructor({url, positions, epoch, onEpoch, onEvent, onStatus, onCaughtUp, onAuthFailure, token = null}) {
        this.url = url;
        this.token = token;
        this.positions = positions;
        this.epoch = epoch ?? null;
        this.onEpoch = onEpoch ?? (() => {});
        this.onEvent = onEvent;
        this.onStatus = onStatus;
        this.onCaughtUp = onCaughtUp; // (resumed, gaps) when every subscription has caught up
        this.onAuthFailure = onAuthFailure; // the handshake was denied: log in again, then call handshake()
        this.stats = {events: 0, duplicates: 0, handshakes: 0, gaps: 0};
        this.status = "connecting";
    }

    start() {
        const cometd = this.#cometd;
        cometd.configure({url: this.url, logLevel: "warn", backoffIncrement: 500, maxBackoff: 4000,
            maxNetworkDelay: 15000});
        cometd.registerExtension("ack", new AckExtension());
        cometd.registerExtension("replay", new ReplayExtension(this));
        cometd.addListener("/meta/handshake", message => this.#handshook(message));
        cometd.addListener("/meta/connect", message => this.#connectReplied(message));
        this.handshake();
    }

    handshake() {
        this.#stopped = false;
        // The client keeps these for its own re-handshakes (after a 402) until the next call here.
        this.#cometd.handshake(this.token ? {ext: {authentication: {token: this.token}}} : undefined);
    }

    stop() {
        this.#stopped = true;
        this.#cometd.disconnect();
        this.#setStatus("disconnected");
    }

    // --- the replay extension's questions -------------------------------------------------------------

    resumeFrom(channel) {
        const last = this.positions[channel];
        if (typeof last === "number") return last;
        return FROM_START.has(channel) ? ALL_RETAINED : NEW_ONLY;
    }

    subscribed(channel, replay) {
        this.#pending.delete(channel);
        const replaced = replay ? this.#adoptEpoch(replay.epoch) : false;
        const last = this.positions[channel];
        if (replay && replay.recovered === false) {
            // A gap: the broker sends what its log retains, from the oldest event, and the state is re-read
            // through the REST API once caught up. Those ids may be at or below ours if the log started over.
            const reason = replaced ? "the event log was replaced"
                : typeof last === "number" && replay.latest < last ? "the event log was reset"
                    : "events after the last one seen were trimmed";
            this.#gaps.push({channel, reason, oldest: replay.oldest});
            delete this.positions[channel];
            if (typeof replay.latest === "number" && replay.latest >= replay.oldest && replay.latest > 0) {
                this.#catchingUp.set(channel, replay.latest);
            }
        } else if (replay && typeof replay.latest === "number" && replay.latest > (last ?? 0)
            && this.resumeFrom(channel) !== NEW_ONLY) {
            this.#catchingUp.set(channel, replay.latest);
        }
        this.#progress();
    }

    // The subscribe reply names the log's epoch. Another one than ours: every id we hold is another log's
    // (the subscribes that sent them are answered recovered: false), so none is kept. Returns whether it was.
    #adoptEpoch(epoch) {
        if (typeof epoch !== "string" || epoch === this.epoch) return false;
        const replaced = typeof this.epoch === "string";
        if (replaced) {
            for (const channel of Object.keys(this.positions)) delete this.positions[channel];
        }
        this.epoch = epoch;
        this.onEpoch(epoch);
        return replaced;
    }

    // Whether an event is new: each stream's ids only grow, so anything at or below the last id handled
    // was seen already (a re-sent ack batch, an overlap between a replay and live events).
    admit(channel, id) {
        const last = this.positions[channel];
        if (typeof last === "number" && id <= last) {
            this.stats.duplicates += 1;
            return false;
        }
        this.positions[channel] = id;
        this.stats.events += 1;
        const target = this.#catchingUp.get(channel);
        if (target !== undefined && id >= target) {
            this.#catchingUp.delete(channel);
            queueMicrotask(() => this.#progress()); // after this event's listeners ran
        }
        return true;
    }

    // --- state ------------------------------------------------------------------------------------------

    #handshook(message) {
        if (message.successful) {
            this.#handshakes += 1;
            this.stats.handshakes = this.#handshakes;
            this.#gaps = [];
            this.#catchingUp.clear();
            this.#pending = new Set(TOPICS);
            // A re-handshake drops the client's subscriptions: subscribe again, in one request.
            this.#cometd.batch(() => {
                for (const topic of TOPICS) this.#cometd.subscribe(topic, event => this.onEvent(topic, event.data));
            });
            return;
        }
        this.#connected = false;
        const denied = typeof message.error === "string" && message.error.startsWith("403");
        if (denied && !this.#stopped) {
            // The broker no longer knows our login (a restart, an expiry): the client has stopped; the
            // desktop logs in again and handshakes anew.
            this.#setStatus("reconnecting");
            this.onAuthFailure(message);
            return;
        }
        this.#setStatus(this.#everConnected ? "reconnecting" : "connecting");
    }

    #connectReplied(message) {
        if (this.#cometd.isDisconnected()) return;
        const connected = message.successful === true;
        if (connected === this.#connected) return;
        this.#connected = connected;
        this.#progress();
    }

    #progress() {
        if (!this.#connected) {
            this.#setStatus(this.#everConnected ? "reconnecting" : "connecting");
            return;
        }
        if (this.#pending.size > 0) return; // subscribe replies are on their way
        const resumed = this.#handshakes > 1;
        if (this.#catchingUp.size > 0) {
            this.#setStatus(resumed ? "resuming" : "connecting");
            clearTimeout(this.#catchUpTimer);
            this.#catchUpTimer = setTimeout(() => { this.#catchingUp.clear(); this.#progress(); }, CATCH_UP_LIMIT_MS);
            return;
        }
        clearTimeout(this.#catchUpTimer);
        const wasLive = ["connected", "resumed", "resumed-gaps"].includes(this.status);
        this.#everConnected = true;
        this.#setStatus(!resumed ? "connected" : this.#gaps.length ? "resumed-gaps" : "resumed");
        if (!wasLive) {
            this.stats.gaps += this.#gaps.length;
            this.onCaughtUp(resumed, [...this.#gaps]);
        }
    }

    #setStatus(status) {
        if (status === this.status) return;
        this.status = status;
        this.onStatus(status);
    }
}
