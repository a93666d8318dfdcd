// The agent desktop: login, channel readiness, the work list, the conversation pane and its actions.
// Wires the REST API (api.js), the CometD connection (connection.js) and the model (model.js) to the DOM.

import {alertStats, beep, flashTitle, notify, prepareAlerts} from "/desktop/alerts.js";
import {GwsApi, GwsError, UnreachableError} from "/desktop/api.js";
import {Connection} from "/desktop/connection.js";
import {COLLECTION, DesktopModel, isActive, MEDIA} from "/desktop/model.js";

const $ = selector => document.querySelector(selector);
const CHANNELS = ["sms", "chat"];
const TYPING_IDLE_MS = 3000;
const STATUS_LABELS = {
    connecting: "Connecting…", connected: "Connected", reconnecting: "Reconnecting…", resuming: "Resuming…",
    resumed: "Connected · resumed", "resumed-gaps": "Connected · resumed with gaps", disconnected: "Disconnected",
};
const MEDIA_LABELS = {sms: "SMS", chat: "Chat"};
// Not-ready reason codes in the agent's words; null: no reason worth showing (the session just started).
const REASON_LABELS = {
    LoggedIn: null, Login: null, Break: "Break", Lunch: "Lunch", Meeting: "Meeting", Training: "Training",
    Coaching: "Coaching", Personal: "Personal", Away: "Away", AfterCallWork: "After-call work",
    ACW: "After-call work", WrapUp: "Wrap-up", SystemError: "System problem", Offline: "Offline",
};

const api = new GwsApi();
let user = null; // the user resource
let model = null;
let connection = null;
let selected = null; // id of the interaction in the conversation pane
let typingSent = null; // {id, agentsOnly, timer} while we told others we are typing
let renderQueued = false;
let saveTimer = null;
const alerted = new Set(); // offers already announced (beep, notification) in this page

// --- storage: per user, per tab --------------------------------------------------------------------------

const storageKey = name => `agent-desktop:${user.id}:${name}`;

function loadSaved() {
    try {
        return JSON.parse(sessionStorage.getItem(storageKey("state")) ?? "null");
    } catch {
        return null;
    }
}

function save() {
    clearTimeout(saveTimer);
    saveTimer = setTimeout(() => {
        if (user && model) sessionStorage.setItem(storageKey("state"), JSON.stringify(model));
    }, 100);
}

function desiredReady() {
    try {
        return JSON.parse(sessionStorage.getItem(storageKey("ready")) ?? "{}");
    } catch {
        return {};
    }
}

function setDesiredReady(channel, ready) {
    sessionStorage.setItem(storageKey("ready"), JSON.stringify({...desiredReady(), [channel]: ready}));
}

// --- login and the contact-center session --------------------------------------------------------------

async function startSession() {
    // StartContactCenterSession puts every channel NotReady: go Ready again where the agent was Ready, so a
    // broker restart or a reload leaves the agent as they were. No retry: this runs inside a re-login too.
    await api.post("/api/v2/me", {operationName: "StartContactCenterSession", channels: CHANNELS}, {retry: false});
    const wanted = desiredReady();
    for (const channel of CHANNELS) {
        if (wanted[channel]) {
            await api.post(`/api/v2/me/channels/${channel}`, {operationName: "Ready"}, {retry: false});
        }
    }
}

api.onRelogin = async me => {
    user = me;
    await startSession();
};

async function enter(me) {
    user = me;
    model = new DesktopModel(loadSaved());
    readChannels(me);
    $("#login-view").hidden = true;
    $("#desktop-view").hidden = false;
    $("#agent-name").textContent = `${nickname()} (${me.userName})`;
    await startSession();
    connection = new Connection({
        url: `${location.origin}/api/v2/notifications`,
        token: api.token,
        positions: model.positions,
        epoch: model.replayEpoch,
        onEpoch: epoch => {
            model.replayEpoch = epoch;
            save();
        },
        onEvent: onEvent,
        onStatus: showStatus,
        onCaughtUp: (resumed, gaps) => {
            if (gaps.length) {
                banner(`Resumed with gaps (${gaps.map(g => g.channel).join(", ")}): state reloaded from the server`);
            }
            refresh().catch(showError);
        },
        onAuthFailure: () => {
            api.relogin().then(() => connection.handshake(), error => {
                showError(error);
                showLogin("Your session ended: log in again.");
            });
        },
    });
    window.desktop = {connection, model, alerts: alertStats}; // for the end-to-end test and for support sessions
    connection.start();
    render();
}

// The user resource's channels: each one's state, and its capacity when the server says it (a number of
// interactions at once; read defensively: older servers do not send it).
function readChannels(me) {
    for (const entry of me.channels ?? []) {
        if (!entry?.channel) continue;
        if (entry.userState) model.channels[entry.channel] = entry.userState;
        const capacity = typeof entry.capacity === "object" ? entry.capacity?.max ?? entry.capacity?.value : entry.capacity;
        if (Number.isInteger(capacity)) capacities[entry.channel] = capacity;
    }
}

const capacities = {}; // channel -> how many interactions at once, when known

function nickname() {
    return user.firstName || user.userName;
}

function showLogin(message = "") {
    $("#desktop-view").hidden = true;
    $("#login-view").hidden = false;
    $("#login-error").textContent = message;
    $("#login-user").focus();
}

$("#login-form").addEventListener("submit", async event => {
    event.preventDefault();
    prepareAlerts(); // a user gesture: sound and the notification prompt are allowed now
    const button = $("#login-submit");
    button.disabled = true;
    $("#login-error").textContent = "";
    try {
        await enter(await api.login($("#login-user").value.trim(), $("#login-password").value));
        $("#login-password").value = "";
    } catch (error) {
        $("#login-error").textContent = error instanceof GwsError ? error.message : `Cannot log in: ${error.message}`;
    } finally {
        button.disabled = false;
    }
});

$("#logout").addEventListener("click", async () => {
    try {
        await api.post("/api/v2/me", {operationName: "EndContactCenterSession"});
    } catch (error) {
        console.warn("EndContactCenterSession", error);
    }
    connection?.stop();
    sessionStorage.removeItem(storageKey("state"));
    sessionStorage.removeItem(storageKey("ready"));
    api.forget();
    user = model = connection = selected = null;
    alerted.clear();
    flashTitle(null);
    showLogin("Logged out.");
});

// --- events and REST reads --------------------------------------------------------------------------------

function onEvent(topic, data) {
    if (topic === "/v2/me/channels") {
        model.applyChannels(data);
    } else if (topic === "/v2/me/interactions") {
        model.applyInteraction(data);
    } else if (topic === "/v2/me/workbins") {
        refreshWorkbins().catch(showError);
    } else if (MEDIA[topic]) {
        const id = model.applyMedia(topic, data, nickname());
        const rec = id && model.interactions[id];
        if (rec && id === selected) rec.unread = 0; // read as it arrives
        if (rec && rec.state === "Invited" && (!selected || !isActive(model.interactions[selected]?.state))) {
            selected = id; // a new offer takes the pane when nothing is being worked on
        }
        while (model.errors.length) banner(model.errors.shift().message);
    }
    save();
    scheduleRender();
}

// Read the current state: after login, and after a resume (the log may not have had everything).
async function refresh() {
    const me = await api.get("/api/v2/me?subresources=*");
    readChannels(me.user);
    for (const [media, collection] of Object.entries(COLLECTION)) {
        const listing = await api.get(`/api/v2/me/${collection}?fields=*`);
        model.reconcile(media, listing[collection] ?? []);
    }
    await refreshWorkbins();
    save();
    scheduleRender();
}

async function refreshWorkbins() {
    const listing = await api.get("/api/v2/me/workbins?fields=*");
    const bins = [];
    for (const bin of listing.workbins ?? []) {
        bins.push((await api.get(`/api/v2/me/workbins/${encodeURIComponent(bin.id)}`)).workbin);
    }
    model.workbins = bins;
    scheduleRender();
}

// --- actions -----------------------------------------------------------------------------------------------

async function operate(id, operationName, params = {}) {
    const rec = model.interactions[id];
    return api.post(`/api/v2/me/${COLLECTION[rec.media]}/${encodeURIComponent(id)}`, {operationName, ...params});
}

function targetPath() {
    const target = $("#target").value.trim();
    if (!target) throw new Error("enter an agent id or a queue name first");
    return `/${$("#target-kind").value}/${encodeURIComponent(target)}`;
}

async function runAction(op) {
    const id = selected;
    if (op === "Accept") return operate(id, "Accept", {nickname: nickname()});
    if (["Invite", "Consult", "Transfer"].includes(op)) return operate(id, op, {targetPath: targetPath()});
    if (op === "SetDisposition") return operate(id, op, {disposition: $("#disposition").value});
    if (op === "PlaceInWorkbin") {
        const bin = model.workbins.find(b => b.workbinName === "InProgress") ?? model.workbins[0];
        if (!bin) throw new Error("no workbin to place it in");
        return api.post(`/api/v2/me/workbins/${encodeURIComponent(bin.id)}`, {operationName: "AddInteraction", id});
    }
    return operate(id, op);
}

$("#actions").addEventListener("click", async event => {
    const button = event.target.closest("button[data-op]");
    if (!button || !selected) return;
    button.disabled = true;
    try {
        await runAction(button.dataset.op);
        if (button.dataset.op === "Accept") $("#composer-text").focus();
    } catch (error) {
        showError(error);
    } finally {
        scheduleRender();
    }
});

$("#channels").addEventListener("click", async event => {
    const button = event.target.closest("button.chan-toggle");
    if (!button) return;
    const channel = button.dataset.channel;
    const ready = model.channels[channel]?.state !== "Ready";
    if (ready) prepareAlerts();
    button.disabled = true;
    try {
        setDesiredReady(channel, ready);
        await api.post(`/api/v2/me/channels/${channel}`, ready ? {operationName: "Ready"} :
            {operationName: "NotReady", reason: "Break"});
    } catch (error) {
        showError(error);
    } finally {
        button.disabled = false;
    }
});

$("#work-list").addEventListener("click", event => select(event.target.closest("li[data-id]")?.dataset.id));
$("#interactions").addEventListener("click", event => select(event.target.closest("li[data-id]")?.dataset.id));

$("#workbins").addEventListener("click", async event => {
    const button = event.target.closest("button[data-pull]");
    if (!button) return;
    try {
        await api.post(`/api/v2/me/workbins/${encodeURIComponent(button.dataset.bin)}`,
            {operationName: "Pull", id: button.dataset.pull});
    } catch (error) {
        showError(error);
    }
});

function select(id) {
    if (!id || !model.interactions[id]) return;
    selected = id;
    model.interactions[id].unread = 0;
    scheduleRender();
}

// --- composer and typing ------------------------------------------------------------------------------------

function agentsOnly(rec) {
    return $("#agents-only").checked || !rec.capabilities.includes("SendMessage");
}

$("#composer-text").addEventListener("input", () => {
    const rec = model?.interactions[selected];
    if (!rec || !$("#composer-text").value) return stopTyping();
    const internal = agentsOnly(rec);
    const op = internal ? "SendStartTypingToAgentsNotification" : "SendStartTypingNotification";
    if (!typingSent && rec.capabilities.includes(op)) {
        typingSent = {id: rec.id, internal, timer: null};
        operate(rec.id, op).catch(showError);
    }
    if (typingSent) {
        clearTimeout(typingSent.timer);
        typingSent.timer = setTimeout(stopTyping, TYPING_IDLE_MS);
    }
});

function stopTyping({sent = false} = {}) {
    if (!typingSent) return;
    const {id, internal, timer} = typingSent;
    clearTimeout(timer);
    typingSent = null;
    const rec = model?.interactions[id];
    const op = internal ? "SendStopTypingToAgentsNotification" : "SendStopTypingNotification";
    // A sent message ends typing by itself; only an abandoned draft needs the explicit stop.
    if (!sent && rec?.capabilities.includes(op)) operate(id, op).catch(showError);
}

$("#composer").addEventListener("submit", async event => {
    event.preventDefault();
    const rec = model.interactions[selected];
    const text = $("#composer-text").value.trim();
    if (!rec || !text) return;
    const op = agentsOnly(rec) ? "SendToAgents" : "SendMessage";
    stopTyping({sent: true});
    $("#send").disabled = true;
    try {
        await operate(rec.id, op, {text});
        $("#composer-text").value = "";
    } catch (error) {
        showError(error);
    } finally {
        scheduleRender();
    }
});

$("#composer-text").addEventListener("keydown", event => {
    if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        $("#composer").requestSubmit();
    }
});

// --- status and errors ----------------------------------------------------------------------------------------

function showStatus(status) {
    const pill = $("#conn-state");
    pill.dataset.state = status;
    pill.textContent = STATUS_LABELS[status] ?? status;
    if (status === "resumed" || (status === "connected" && $("#banner").dataset.kind === "unreachable")) hideBanner();
}

// keep: until the connection is back (the server was unreachable), not just 8 seconds.
function banner(text, {keep = false} = {}) {
    const element = $("#banner");
    element.textContent = text;
    element.hidden = false;
    element.dataset.kind = keep ? "unreachable" : "notice";
    clearTimeout(element.timer);
    if (!keep) element.timer = setTimeout(hideBanner, 8000);
}

function hideBanner() {
    $("#banner").hidden = true;
}

function showError(error) {
    console.warn(error);
    if (error instanceof UnreachableError) return banner(error.message, {keep: true});
    banner(error instanceof GwsError && error.statusCode > 0 ? `${error.message} (statusCode ${error.statusCode})` :
        error.message);
}

// --- rendering --------------------------------------------------------------------------------------------------

function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    // A timer, not requestAnimationFrame: a desktop in a background tab must keep its view current.
    setTimeout(() => {
        renderQueued = false;
        render();
    }, 16);
}

function element(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
        if (value === undefined || value === null || value === false) continue;
        if (name === "class") node.className = value;
        else if (name.startsWith("data-")) node.setAttribute(name, value);
        else node[name] = value;
    }
    node.append(...children.filter(c => c !== null && c !== undefined));
    return node;
}

function render() {
    if (!model) return;
    renderChannels();
    renderWork();
    renderInteractions();
    renderWorkbins();
    renderConversation();
    updateAlerts();
}

// --- offers: countdown, sound, notification, title --------------------------------------------------------------

function countdown(ms) {
    const seconds = Math.ceil(ms / 1000);
    return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
}

function previewOf(rec) {
    const preview = rec.offer?.preview;
    if (preview?.text) return preview;
    // An older server sends no preview: the first customer message we hold, if any.
    const first = model.sortedMessages(rec).find(m => m.type === "Text" && m.from?.type === "Customer");
    return first ? {nickname: first.from.nickname, text: first.text ?? ""} : null;
}

function offerTitle(rec) {
    return `New ${MEDIA_LABELS[rec.media] ?? rec.media}`;
}

// Announce each new offer once, and flash the title while any offer waits for an answer.
function updateAlerts() {
    const pending = model.pendingOffers();
    for (const rec of pending) {
        if (alerted.has(rec.id)) continue;
        alerted.add(rec.id);
        beep();
        const preview = previewOf(rec);
        notify(`${offerTitle(rec)} from ${title(rec)}`, preview ? preview.text : "Accept or reject it in the agent desktop",
            `offer-${rec.id}`, () => select(rec.id));
    }
    flashTitle(pending.length ? `● ${offerTitle(pending[0])}${pending.length > 1 ? ` (+${pending.length - 1})` : ""}` : null);
}

function renderChannels() {
    let anyReady = false;
    for (const channel of CHANNELS) {
        const state = model.channels[channel];
        const ready = state?.state === "Ready";
        anyReady ||= ready;
        const label = document.querySelector(`[data-channel-state="${channel}"]`);
        label.dataset.state = ready ? "Ready" : "NotReady";
        label.textContent = channelStateLabel(state);
        document.querySelector(`button.chan-toggle[data-channel="${channel}"]`).textContent = ready ? "Go Not Ready" : "Go Ready";
        const cap = document.querySelector(`[data-channel-capacity="${channel}"]`);
        cap.textContent = capacities[channel] ? `up to ${capacities[channel]} at a time` : "";
        cap.hidden = !capacities[channel];
    }
    const pill = $("#agent-state");
    pill.dataset.state = anyReady ? "Ready" : "NotReady";
    pill.textContent = anyReady ? "Ready" : "Not ready";
}

// "Ready", "Not ready", "Not ready — Lunch": never the raw reason code.
function channelStateLabel(state) {
    if (state?.state === "Ready") return "Ready";
    const reason = reasonLabel(state?.reason);
    return reason ? `Not ready — ${reason}` : "Not ready";
}

function reasonLabel(code) {
    if (!code) return null;
    if (code in REASON_LABELS) return REASON_LABELS[code];
    // An unknown code: its words, in sentence case ("CustomerCallback" -> "Customer callback").
    const words = String(code).replace(/[_-]+/g, " ").replace(/([a-z])([A-Z])/g, "$1 $2").trim().toLowerCase();
    return words ? words[0].toUpperCase() + words.slice(1) : null;
}

const STATE_LABELS = {Invited: "Offered", LeftChat: "Wrap-up", InWorkbin: "In workbin"};

function stateLabel(state) {
    return STATE_LABELS[state] ?? state;
}

function title(rec) {
    return rec.customer ?? rec.id;
}

function renderWork() {
    const active = Object.values(model.interactions).filter(r => isActive(r.state)).sort((a, b) => a.createdAt - b.createdAt);
    $("#work-count").textContent = active.length;
    const list = $("#work-list");
    list.replaceChildren(...(active.length ? active.map(rec => element("li",
        {class: `work-item${rec.id === selected ? " selected" : ""}`, "data-id": rec.id, "data-state": rec.state},
        element("span", {class: `media ${rec.media}`}, MEDIA_LABELS[rec.media] ?? rec.media),
        element("span", {class: "who"}, title(rec)),
        rec.unread ? element("span", {class: "unread"}, String(rec.unread)) : null,
        element("span", {class: `state ${rec.state}`}, workStateLabel(rec)))) :
        [element("li", {class: "empty"}, "No interactions yet")]));
}

function workStateLabel(rec) {
    const left = model.offerRemaining(rec);
    return left === null ? stateLabel(rec.state) : `${stateLabel(rec.state)} · ${countdown(left)}`;
}

function renderInteractions() {
    const all = Object.values(model.interactions).sort((a, b) => b.createdAt - a.createdAt);
    $("#interactions").replaceChildren(...(all.length ? all.map(rec => element("li",
        {"data-id": rec.id, "data-state": rec.state, class: rec.id === selected ? "selected" : ""},
        element("span", {class: `media ${rec.media}`}, MEDIA_LABELS[rec.media] ?? rec.media),
        element("span", {class: "who"}, title(rec)),
        element("span", {class: `state ${rec.state}`}, stateLabel(rec.state)),
        rec.userData?.DispositionCode ? element("span", {class: "disposition"}, rec.userData.DispositionCode) : null)) :
        [element("li", {class: "empty"}, "None")]));
}

function renderWorkbins() {
    const bins = model.workbins;
    const item = (bin, entry) => element("li", {"data-id": entry.id},
        element("span", {}, model.interactions[entry.id]?.customer ?? entry.id),
        element("button", {type: "button", "data-pull": entry.id, "data-bin": bin.id}, "Pull"));
    const row = bin => element("li", {"data-workbin": bin.id},
        element("span", {class: "bin-name"}, bin.displayName),
        element("span", {class: "count"}, String(bin.interactions?.length ?? 0)),
        element("ul", {}, ...(bin.interactions ?? []).map(entry => item(bin, entry))));
    $("#workbins").replaceChildren(...(bins.length ? bins.map(row) : [element("li", {class: "empty"}, "None")]));
}

function renderConversation() {
    const rec = selected && model.interactions[selected];
    $("#no-selection").hidden = Boolean(rec);
    $("#conversation-pane").hidden = !rec;
    if (!rec) return;
    $("#conversation-pane").dataset.id = rec.id;
    $("#conv-title").textContent = title(rec);
    $("#conv-meta").textContent = `${MEDIA_LABELS[rec.media] ?? rec.media} · ${rec.id}` +
        (rec.userData?.DispositionCode ? ` · disposition ${rec.userData.DispositionCode}` : "");
    const state = $("#conv-state");
    state.textContent = stateLabel(rec.state);
    state.dataset.state = rec.state;
    renderOffer(rec);
    $("#conv-participants").replaceChildren(...rec.participants.map(p =>
        element("span", {class: `participant ${p.type}`}, p.nickname)));
    for (const button of document.querySelectorAll("#actions button[data-op]")) {
        button.disabled = !rec.capabilities.includes(button.dataset.cap ?? button.dataset.op);
    }
    const workbinsOk = model.workbins.length > 0;
    document.querySelector('#actions button[data-op="PlaceInWorkbin"]').disabled ||= !workbinsOk;
    renderTranscript(rec);
    const typing = model.typingNow(rec);
    $("#typing").textContent = typing.length ? `${typing.join(", ")} ${typing.length > 1 ? "are" : "is"} typing…` : "";
    const canWrite = rec.capabilities.includes("SendMessage") || rec.capabilities.includes("SendToAgents");
    $("#composer-text").disabled = !canWrite;
    $("#send").disabled = !canWrite;
    // The agent chooses only when both audiences are open; otherwise the capabilities decide.
    const toCustomer = rec.capabilities.includes("SendMessage");
    const toAgents = rec.capabilities.includes("SendToAgents");
    $("#agents-only").disabled = !(toCustomer && toAgents);
    if (toCustomer !== toAgents) $("#agents-only").checked = toAgents;
}

// The offer banner of the pane: how long is left to answer, and what the customer wrote first.
function renderOffer(rec) {
    const panel = $("#offer-panel");
    panel.hidden = rec.state !== "Invited";
    if (panel.hidden) return;
    const left = model.offerRemaining(rec);
    $("#offer-heading").textContent = `${offerTitle(rec)} from ${title(rec)}`;
    const clock = $("#offer-countdown");
    clock.hidden = left === null;
    clock.dataset.urgent = left !== null && left <= 10000 ? "true" : "false";
    clock.textContent = left === null ? "" : left > 0 ? `Expires in ${countdown(left)}` : "Expiring…";
    const preview = previewOf(rec);
    $("#offer-preview").hidden = !preview;
    $("#offer-preview-from").textContent = preview?.nickname ?? "";
    $("#offer-preview-text").textContent = preview?.text ?? "";
}

function renderTranscript(rec) {
    const list = $("#transcript");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const me = nickname();
    list.replaceChildren(...model.sortedMessages(rec).map(message => {
        const from = message.from ?? {};
        const time = (message.timestamp ?? "").slice(11, 16);
        if (message.type !== "Text") {
            const what = {ParticipantJoined: "joined", ParticipantLeft: "left"}[message.type] ??
                (message.text ?? message.noticeText ?? (message.url ? `sent ${message.url}` : message.type));
            return element("li", {class: "msg system", "data-index": message.index, "data-type": message.type},
                element("span", {class: "text"}, `${from.nickname ?? ""} ${what}`), element("time", {}, time));
        }
        const mine = from.type === "Agent" && from.nickname === me;
        const kind = mine ? "mine" : from.type === "Customer" ? "customer" : "agent";
        return element("li", {class: `msg ${kind}${message.visibility === "Agents" ? " internal" : ""}`,
                "data-index": message.index, "data-type": message.type},
            element("span", {class: "from"}, from.nickname ?? "?"),
            element("span", {class: "text"}, message.text ?? ""),
            element("time", {}, message.visibility === "Agents" ? `${time} · agents only` : time));
    }));
    if (atBottom) list.scrollTop = list.scrollHeight;
}

// Typing notices expire, offer countdowns tick.
setInterval(() => { if (model && (selected || model.pendingOffers().length)) scheduleRender(); }, 1000);

// --- start: resume the tab's session when the broker still knows its cookie ---------------------------------------

// A page opened as /#token=<jwt> (by a portal that signed the agent in) uses that token instead of a
// password. The fragment never reaches a server or its logs; it is removed from the address bar and history.
function tokenFromFragment() {
    const token = new URLSearchParams(location.hash.slice(1)).get("token");
    if (token) history.replaceState(null, "", location.pathname + location.search);
    return token;
}

(async () => {
    const token = tokenFromFragment();
    if (token) {
        try {
            return await enter(await api.loginWithToken(token));
        } catch (error) {
            return showLogin(error instanceof GwsError ? error.message : `Cannot log in: ${error.message}`);
        }
    }
    try {
        const me = await api.resume();
        if (me) return await enter(me);
    } catch (error) {
        console.warn("resume", error);
    }
    showLogin();
})();
