// Shared plumbing for the interop client scripts: argv parsing, one JSON line per
// observation on stdout, an overall deadline, and a clean bounded exit.
//
// Every line printed on stdout is a JSON object with at least {"event": ...,
// "t": <ms since start>}. Library logging goes to stderr so stdout stays parseable.

const started = Date.now();
let exiting = false;

/** `--key=value` and `--flag` arguments (and INTEROP_* environment variables) as an object. */
export function parseArgs(argv = process.argv.slice(2)) {
    const options = {};
    for (const [name, value] of Object.entries(process.env)) {
        if (name.startsWith("INTEROP_")) {
            options[name.slice("INTEROP_".length).toLowerCase().replace(/_/g, "-")] = value;
        }
    }
    for (const arg of argv) {
        const match = /^--([^=]+)(?:=(.*))?$/s.exec(arg);
        if (!match) {
            throw new Error(`unexpected argument ${JSON.stringify(arg)} (use --key=value)`);
        }
        options[match[1]] = match[2] === undefined ? "true" : match[2];
    }
    return options;
}

export function required(options, name) {
    const value = options[name];
    if (value === undefined || value === "") {
        fail(`missing --${name}`);
    }
    return value;
}

export function emit(event, fields = {}) {
    if (exiting) {
        return;  // "exit" is always the last line
    }
    process.stdout.write(JSON.stringify({event, t: Date.now() - started, ...fields}) + "\n");
}

/** Print a final line and exit with `code` once stdout is flushed. */
export function finish(code, fields = {}) {
    if (exiting) {
        return;
    }
    emit("exit", {code, ...fields});
    exiting = true;
    process.stdout.write("", () => process.exit(code));
    // Should the flush callback never run, still exit.
    setTimeout(() => process.exit(code), 1000).unref();
}

export function fail(reason, fields = {}) {
    emit("failure", {reason, ...fields});
    finish(1, {reason});
}

/** The whole script is bounded: after `ms` it reports a timeout and exits with 2. */
export function armDeadline(ms, describe = () => ({})) {
    const timer = setTimeout(() => {
        emit("timeout", {after_ms: ms, ...describe()});
        finish(2, {reason: "timeout"});
    }, ms);
    timer.unref();
    return timer;
}

export function installCrashHandlers() {
    process.on("uncaughtException", (error) => fail(`uncaught exception: ${error && error.stack || error}`));
    process.on("unhandledRejection", (error) => fail(`unhandled rejection: ${error && error.stack || error}`));
}

export function integer(options, name, fallback) {
    const text = options[name];
    if (text === undefined) {
        return fallback;
    }
    const value = Number.parseInt(text, 10);
    if (!Number.isFinite(value)) {
        fail(`--${name} must be an integer, got ${JSON.stringify(text)}`);
    }
    return value;
}
