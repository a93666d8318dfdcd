// The GWS v2 REST API as the desktop uses it: Basic login -> JSESSIONID cookie (HttpOnly, sent by the
// browser) + the CSRF token every GET returns, which POST/PUT/DELETE must echo in X-CSRF-TOKEN.
// Or, when the broker verifies JWTs, a token from the identity provider: every request carries
// `Authorization: Bearer <jwt>` and stands alone (no session, no CSRF token).

export class GwsError extends Error {
    constructor(statusCode, statusMessage, httpStatus) {
        super(statusMessage || `statusCode ${statusCode}`);
        this.statusCode = statusCode;
        this.httpStatus = httpStatus;
    }
}

// The browser could not reach the server at all (it is down, or the network is): fetch() rejects with a
// bare TypeError ("Failed to fetch"), which would tell an agent nothing. Say what happened and what was not done.
export class UnreachableError extends Error {
    constructor(action) {
        super(`Could not reach the server — ${action} was not done. Check your connection and try again.`);
        this.action = action;
    }
}

// The words an agent knows for each operation, for the messages that say one was not done: a button's
// label as the button says it, anything else in lower case ("… sending your message was not done").
const ACTION_NAMES = {
    Accept: "Accept", Reject: "Reject", Complete: "Complete", Leave: "Leave", Invite: "Invite",
    Consult: "Consult", Transfer: "Transfer", SetDisposition: "Set disposition", SendMessage: "sending your message",
    SendToAgents: "sending your message", Ready: "Go Ready", NotReady: "Go Not Ready",
    StartContactCenterSession: "starting your session", EndContactCenterSession: "logging out",
    AddInteraction: "To workbin", Pull: "Pull",
    SendStartTypingNotification: "the typing notice", SendStopTypingNotification: "the typing notice",
    SendStartTypingToAgentsNotification: "the typing notice", SendStopTypingToAgentsNotification: "the typing notice",
};

export function actionName(operationName) {
    return ACTION_NAMES[operationName] ?? "the request";
}

// fetch(), with a network failure turned into an UnreachableError naming the action.
async function reach(action, path, options) {
    try {
        return await fetch(path, options);
    } catch (error) {
        if (error?.name === "AbortError") throw error;
        throw new UnreachableError(action);
    }
}

const NOT_AUTHENTICATED = 20;
// Marks our requests as a script's: the server then answers 401 without a Basic challenge, which
// would make the browser pop up its own login dialog over the page's form.
const SCRIPT = {"X-Requested-With": "XMLHttpRequest"};

function basic(user, password) {
    // btoa() takes Latin-1 only: encode UTF-8 first so any password works.
    const bytes = new TextEncoder().encode(`${user}:${password}`);
    return "Basic " + btoa(String.fromCharCode(...bytes));
}

export class GwsApi {
    #csrf = null;
    #credentials = null; // kept in memory only (never in storage), to log in again after a broker restart
    #relogin = null; // the login in flight, shared by every request that found the session gone
    #token = null; // a JWT, kept in memory only: it authenticates every request instead of the cookie

    constructor() {
        this.onRelogin = async () => {}; // the desktop restores its contact-center session here
    }

    get canRelogin() {
        return this.#credentials !== null;
    }

    // Log in with a password; returns the user resource (with its channels).
    async login(user, password) {
        const me = await this.#get("/api/v2/me?subresources=*", {Authorization: basic(user, password)}, "logging in");
        this.#credentials = {user, password};
        return me.user;
    }

    // Use a JWT for every request; returns the user resource (the server refuses unknown users).
    async loginWithToken(token) {
        const me = await this.#get("/api/v2/me?subresources=*", {Authorization: `Bearer ${token}`}, "logging in");
        this.#token = token;
        return me.user;
    }

    // The JWT in use (the CometD handshake sends it in ext.authentication), or null.
    get token() {
        return this.#token;
    }

    // Resume the HTTP session of the cookie (a page reload): the user resource, or null if it is gone.
    async resume() {
        try {
            return (await this.#get("/api/v2/me?subresources=*", {})).user;
        } catch (error) {
            if (error instanceof GwsError && error.statusCode === NOT_AUTHENTICATED) return null;
            throw error;
        }
    }

    forget() {
        this.#credentials = null;
        this.#token = null;
        this.#csrf = null;
    }

    // The session is gone (broker restart, expiry): log in again with the remembered password, once for
    // all the requests that noticed, then let the desktop restore its state.
    relogin() {
        if (!this.#relogin) {
            this.#relogin = (async () => {
                if (!this.#credentials) throw new GwsError(NOT_AUTHENTICATED, "session expired: log in again", 401);
                const {user, password} = this.#credentials;
                const me = await this.#get("/api/v2/me?subresources=*", {Authorization: basic(user, password)});
                await this.onRelogin(me.user);
                return me.user;
            })().finally(() => { this.#relogin = null; });
        }
        return this.#relogin;
    }

    get(path) {
        return this.#retrying(() => this.#get(path, {}));
    }

    // retry: false inside onRelogin, which must not wait for the login it is part of.
    post(path, body, {retry = true} = {}) {
        const request = () => this.#send("POST", path, body);
        return retry ? this.#retrying(request) : request();
    }

    async #retrying(request) {
        try {
            return await request();
        } catch (error) {
            if (!(error instanceof GwsError) || error.statusCode !== NOT_AUTHENTICATED || !this.canRelogin) throw error;
            await this.relogin();
            return request();
        }
    }

    #bearer() {
        return this.#token ? {Authorization: `Bearer ${this.#token}`} : {};
    }

    async #get(path, headers, action = "the refresh") {
        const response = await reach(action, path, {headers: {...SCRIPT, ...this.#bearer(), ...headers},
            credentials: "same-origin", cache: "no-store"});
        const token = response.headers.get("X-CSRF-TOKEN");
        if (token) this.#csrf = token;
        return GwsApi.#body(response);
    }

    async #send(method, path, body) {
        const action = actionName(body?.operationName);
        if (!this.#csrf && !this.#token) await this.#get("/api/v2/me", {}, action); // a token comes with any GET
        const headers = {...SCRIPT, ...this.#bearer(), "Content-Type": "application/json"};
        if (this.#csrf) headers["X-CSRF-TOKEN"] = this.#csrf;
        const response = await reach(action, path, {method, headers, body: JSON.stringify(body),
            credentials: "same-origin"});
        return GwsApi.#body(response);
    }

    static async #body(response) {
        let body;
        try {
            body = await response.json();
        } catch {
            // A proxy's error page, or a broker restarting behind one: the request was not done either.
            throw new GwsError(-1, `The server answered HTTP ${response.status} instead of the contact-center API:` +
                " the request was not done. Try again in a moment.", response.status);
        }
        if (body.statusCode !== 0 && body.statusCode !== 7) {
            throw new GwsError(body.statusCode, body.statusMessage, response.status);
        }
        return body;
    }
}
