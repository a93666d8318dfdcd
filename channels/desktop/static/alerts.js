// How a new offer reaches an agent who is looking elsewhere: a short beep (WebAudio, no sound file), a
// browser notification (once the agent allowed them) and the tab's title flashing until the offer is
// accepted, rejected or gone. No DOM besides document.title.

const BASE_TITLE = "Agent desktop";
const FLASH_MS = 1000;

let audio = null;
let flash = {text: null, timer: null};
export const alertStats = {beeps: 0, notifications: 0}; // for the end-to-end test

// Call on a user gesture (login, Go Ready): browsers allow sound and the permission prompt only then.
export function prepareAlerts() {
    try {
        audio ??= new AudioContext();
        if (audio.state === "suspended") audio.resume().catch(() => {});
    } catch {
        audio = null; // no WebAudio: offers still flash the title and notify
    }
    if ("Notification" in window && Notification.permission === "default") {
        Notification.requestPermission().catch(() => {});
    }
}

// Two short tones, about 0.3 s in all, quiet enough for a headset.
export function beep() {
    if (!audio) return;
    try {
        const start = audio.currentTime;
        for (const [offset, frequency] of [[0, 880], [0.16, 1175]]) {
            const oscillator = audio.createOscillator();
            const gain = audio.createGain();
            oscillator.type = "sine";
            oscillator.frequency.value = frequency;
            gain.gain.setValueAtTime(0.0001, start + offset);
            gain.gain.exponentialRampToValueAtTime(0.15, start + offset + 0.02);
            gain.gain.exponentialRampToValueAtTime(0.0001, start + offset + 0.14);
            oscillator.connect(gain).connect(audio.destination);
            oscillator.start(start + offset);
            oscillator.stop(start + offset + 0.15);
        }
        alertStats.beeps += 1;
    } catch (error) {
        console.warn("beep", error);
    }
}

// A system notification when the agent allowed them; clicking it brings the desktop forward.
export function notify(title, body, tag, onClick) {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    try {
        const notification = new Notification(title, {body, tag, requireInteraction: false});
        notification.onclick = () => {
            window.focus();
            onClick?.();
            notification.close();
        };
        alertStats.notifications += 1;
    } catch (error) {
        console.warn("notification", error); // e.g. a browser that allows them only from a service worker
    }
}

// "● New SMS — Agent desktop" alternating with the plain title while `text` is set; null stops it.
export function flashTitle(text) {
    if (text === flash.text) return;
    clearInterval(flash.timer);
    flash = {text, timer: null};
    document.title = text ? `${text} — ${BASE_TITLE}` : BASE_TITLE;
    if (!text) return;
    let on = true;
    flash.timer = setInterval(() => {
        on = !on;
        document.title = on ? `${text} — ${BASE_TITLE}` : BASE_TITLE;
    }, FLASH_MS);
}
