// What the desktop knows, built from /v2/me notifications and REST reads. No DOM here.
// Saved in sessionStorage together with the replay positions, so a reload resumes exactly where the
// saved state stands: the state and the ids it was built from are always written together.

export const MEDIA = {
    "/v2/me/smssessions": {media: "sms", key: "smssession", uriKey: "smssessionUri", collection: "smssessions"},
    "/v2/me/chats": {media: "chat", key: "chat", uriKey: "chatUri", collection: "chats"},
};
export const COLLECTION = {sms: "smssessions", chat: "chats"};
const ACTIVE = new Set(["Invited", "Chatting", "LeftChat"]);
const TYPING_SHOWN_MS = 15000; // a typing notice older than this (or replayed from history) is stale
const KEPT = 40; // finished interactions kept for the lists

export function isActive(state) {
    return ACTIVE.has(state);
}

function idFromUri(uri) {
    return typeof uri === "string" ? uri.replace(/\/+$/, "").split("/").pop() : undefined;
}

export class DesktopModel {
    constructor(saved) {
        this.positions = saved?.positions ?? {}; // channel -> last replayId handled
        this.replayEpoch = saved?.replayEpoch ?? null; // the event log those ids come from
        this.interactions = saved?.interactions ?? {}; // id -> record
        this.channels = {}; // "sms" -> {state, reason}
        this.workbins = []; // [{id, displayName, interactions: [...]}]
        this.errors = []; // Error notifications to show
    }

    toJSON() {
        return {positions: this.positions, replayEpoch: this.replayEpoch, interactions: this.interactions};
    }

    record(id, media) {
        let rec = this.interactions[id];
        if (!rec) {
            rec = {id, media, state: "Unknown", capabilities: [], participants: [], userData: {}, messages: {},
                typing: {}, customer: null, createdAt: Date.now(), updatedAt: Date.now(), unread: 0};
            this.interactions[id] = rec;
        }
        if (media && !rec.media) rec.media = media;
        return rec;
    }

    // One notification from a media channel; returns the interaction id it was about (or null).
    applyMedia(topic, data, me) {
        const names = MEDIA[topic];
        if (!names || !data) return null;
        if (data.notificationType === "NewMessages") {
            const id = idFromUri(data[names.uriKey]);
            if (!id) return null;
            const rec = this.record(id, names.media);
            for (const message of data.messages ?? []) this.#addMessage(rec, message, me);
            rec.updatedAt = Date.now();
            return id;
        }
        const resource = data[names.key];
        if (!resource?.id) return null;
        const rec = this.record(resource.id, names.media);
        this.#applyResource(rec, resource);
        if (data.notificationType === "Error" && data.errorMessage) {
            this.errors.push({id: rec.id, message: data.errorMessage});
        }
        return rec.id;
    }

    // A notification from /v2/me/interactions: the generic view (it says when an item is in a workbin).
    applyInteraction(data) {
        const view = data?.interaction;
        if (!view?.id || !view.mediaType) return null;
        const rec = this.record(view.id, view.mediaType);
        if (view.state === "InWorkbin") {
            rec.state = "InWorkbin";
            rec.capabilities = [];
            rec.workbinId = view.workbinId;
        } else {
            rec.workbinId = undefined;
        }
        if (view.userData) rec.userData = view.userData;
        rec.updatedAt = Date.now();
        return rec.id;
    }

    applyChannels(data) {
        for (const entry of data?.channels ?? []) {
            if (entry?.channel && entry.userState) this.channels[entry.channel] = entry.userState;
        }
    }

    // The REST list of the agent's open interactions of one medium is the truth: anything we hold as
    // active that it does not list has ended for us (e.g. an offer withdrawn while the broker restarted).
    reconcile(media, views) {
        const listed = new Set();
        for (const view of views) {
            listed.add(view.id);
            this.#applyResource(this.record(view.id, media), view);
        }
        for (const rec of Object.values(this.interactions)) {
            if (rec.media === media && isActive(rec.state) && !listed.has(rec.id)) {
                rec.state = rec.state === "Invited" ? "Revoked" : "Completed";
                rec.capabilities = [];
            }
        }
        this.#prune();
    }

    // Milliseconds left to answer an offer (0 once it is due), or null when it is not an offer with a deadline.
    // Never more than the offer's timeout, so a browser clock ahead of the server's cannot stretch it.
    offerRemaining(rec, now = Date.now()) {
        const offer = rec.state === "Invited" ? rec.offer : null;
        if (!offer || typeof offer.expiresAtMs !== "number") return null;
        const left = offer.expiresAtMs - now;
        const cap = typeof offer.timeout === "number" ? offer.timeout * 1000 : left;
        return Math.max(0, Math.min(left, cap));
    }

    // Offers still waiting for an answer.
    pendingOffers(now = Date.now()) {
        return Object.values(this.interactions).filter(r => r.state === "Invited" && this.offerRemaining(r, now) !== 0);
    }

    typingNow(rec, now = Date.now()) {
        return Object.values(rec.typing).filter(t => now - t.at < TYPING_SHOWN_MS).map(t => t.nickname);
    }

    sortedMessages(rec) {
        return Object.values(rec.messages).sort((a, b) => a.index - b.index);
    }

    #applyResource(rec, resource) {
        if (resource.state) rec.state = resource.state;
        if (Array.isArray(resource.capabilities)) rec.capabilities = resource.capabilities;
        if (Array.isArray(resource.participants) && (resource.participants.length || !isActive(rec.state))) {
            rec.participants = resource.participants;
            const customer = resource.participants.find(p => p.type === "Customer");
            if (customer) rec.customer = customer.nickname;
        }
        if (resource.userData) rec.userData = resource.userData;
        // While Invited: when the offer times out and the customer's first message (the preview).
        if (rec.state === "Invited") {
            if (resource.offer) rec.offer = resource.offer;
        } else {
            delete rec.offer;
        }
        if (rec.state !== "InWorkbin") rec.workbinId = undefined;
        rec.updatedAt = Date.now();
    }

    #addMessage(rec, message, me) {
        const from = message.from ?? {};
        if (from.type === "Customer" && !rec.customer) rec.customer = from.nickname;
        if (message.type === "TypingStarted" || message.type === "TypingStopped") {
            if (from.type === "Agent" && from.nickname === me) return; // our own typing is not news
            if (message.type === "TypingStarted") {
                rec.typing[from.participantId] = {nickname: from.nickname, at: message.timestampSeconds ?? Date.now()};
            } else {
                delete rec.typing[from.participantId];
            }
            return;
        }
        if (message.type === "Text") delete rec.typing[from.participantId]; // sending ends typing
        if (!(message.index in rec.messages)) {
            rec.messages[message.index] = message; // keyed by index: a message is shown once, whatever arrives twice
            if (message.type === "Text" && !(from.type === "Agent" && from.nickname === me)) rec.unread += 1;
        }
    }

    #prune() {
        const finished = Object.values(this.interactions).filter(r => !isActive(r.state) && r.state !== "InWorkbin")
            .sort((a, b) => b.updatedAt - a.updatedAt);
        for (const rec of finished.slice(KEPT)) delete this.interactions[rec.id];
    }
}
