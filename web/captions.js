// Shared by the overlay, capture and transcript pages: the viewer connection and the caption
// board. Plain ES module, no dependencies, so the pages work offline and need no build step.

/** The page's query parameters as a plain object (first value wins). */
export function pageParams() {
  const params = {};
  for (const [key, value] of new URLSearchParams(location.search)) {
    if (!(key in params)) params[key] = value;
  }
  return params;
}

/**
 * A ws:// or wss:// URL on this server (or on `base`, another node's ws:// address), with the
 * given query parameters (empty ones left out).
 */
export function socketUrl(path, query, base = null) {
  const url = new URL(path, base ? base.replace(/^ws/, "http") : location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, String(value));
  }
  return url.toString();
}

/** Errors after which retrying cannot help: tell the person, do not hammer the server. */
const FATAL_CODES = new Set(["unauthorized", "bad_request"]);

/**
 * A viewer of one room that reconnects by itself with backoff and resumes from the last final
 * it delivered (`since`), so a network blip or a server restart loses and repeats no final.
 *
 * onEvent(message) gets partials and finals; onState(state, detail) gets "connecting", "live",
 * "waiting" (a retry is scheduled; detail.retryIn in seconds) and "refused" (detail.message).
 */
export class CaptionFeed {
  constructor({ room, token, since = null, editor = null, shadow = false, onEvent, onState = () => {}, onReady = () => {} }) {
    this.room = room;
    this.token = token;
    this.editor = editor; // an editor's name: corrections sent with send() are by them
    this.shadow = shadow; // also the shadow model's text of each final (serve --shadow)
    this.onReady = onReady; // the ready message (the server's model, the room's seq)
    this.lastSeq = since; // null: live captions only until the first ready tells us the room's seq
    this.onEvent = onEvent;
    this.onState = onState;
    this.failures = 0;
    this.stopped = false;
    this.socket = null;
    this.timer = null;
  }

  start() {
    this.stopped = false;
    this._connect();
  }

  /** Send a message (an editor's correction); false if the connection is not open. */
  send(message) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000);
  }

  _connect() {
    this.onState("connecting", {});
    const socket = new WebSocket(
      socketUrl("/v1/captions", { room: this.room, since: this.lastSeq, token: this.token, editor: this.editor, shadow: this.shadow ? 1 : null }),
    );
    this.socket = socket;
    let refused = null;
    socket.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return; // the server sends JSON only; ignore anything else rather than stop
      }
      if (event.type === "ready") {
        this.failures = 0;
        if (this.lastSeq === null && Number.isInteger(event.seq)) this.lastSeq = event.seq;
        this.onReady(event);
        this.onState("live", {});
      } else if (event.type === "error") {
        if (FATAL_CODES.has(event.code)) refused = event.message;
      } else if (event.type === "final") {
        // Not numbered yet (the server's store is away): shown now; the numbered final comes
        // when the store has it, for the same session and segment, and replaces it.
        if (!Number.isInteger(event.seq)) return this.onEvent(event);
        // A final at or below the last one shown was already shown: never repeat it.
        if (this.lastSeq !== null && event.seq <= this.lastSeq) return;
        this.lastSeq = event.seq;
        this.onEvent(event);
      } else if (["partial", "correction", "correction_refused", "terms", "translation", "shadow"].includes(event.type)) {
        // A correction names its final by seq; showing it again is harmless (revisions only go up).
        this.onEvent(event);
      }
    };
    socket.onclose = () => {
      if (this.socket !== socket || this.stopped) return;
      if (refused !== null) {
        this.onState("refused", { message: refused });
        return;
      }
      // Partials of the lost connection may never be finalised to us: let the page drop them.
      this.onEvent({ type: "reset" });
      this.failures += 1;
      const base = Math.min(10, 0.5 * 2 ** (this.failures - 1));
      const retryIn = base * (0.75 + Math.random() * 0.5); // jitter: viewers do not return in lockstep
      this.onState("waiting", { retryIn });
      this.timer = setTimeout(() => this._connect(), retryIn * 1000);
    };
  }
}

/**
 * Caption lines in a bottom-anchored stack: a partial is drawn in place (settled characters
 * apart from tentative ones) and its final replaces it in the same element, so nothing jumps;
 * when the stack grows, the old lines glide up instead of snapping.
 */
export class CaptionBoard {
  constructor(stack, { keep = 12, speakers = "auto", lang = "original" } = {}) {
    this.stack = stack;
    this.keep = keep;
    // "original": the captions as spoken; "en": each final's English translation in its place
    // (the original, dimmed, until it comes; no partials); "both": the translation under it.
    this.lang = lang;
    this.translations = new Map(); // seq -> translation text, for a line drawn after it came
    this.speakers = speakers; // "auto": label only when the room has several publishers
    this.blocks = new Map(); // "session/segment" -> element
    this.sessions = new Map(); // session id -> label shown for it
  }

  /** Apply a partial or final; returns true when something visible changed. */
  show(event) {
    if (event.type === "reset") {
      for (const [key, element] of this.blocks) {
        if (element.classList.contains("partial")) {
          element.remove();
          this.blocks.delete(key);
        }
      }
      return true;
    }
    if (event.type === "correction") return this._correct(event);
    if (event.type === "translation") return this._translate(event);
    if (event.type === "partial" && this.lang === "en") return false; // the audience reads the translations
    if (event.type === "correction_refused" || event.type === "terms") return false;
    const key = `${event.session}/${event.segment}`;
    if (!this.sessions.has(event.session)) {
      this.sessions.set(event.session, event.speaker || `Speaker ${this.sessions.size + 1}`);
      if (this.sessions.size === 2) this._relabel();
    }
    let element = this.blocks.get(key);
    if (event.type === "final" && !event.text) {
      // An utterance that came to nothing: clear its partials.
      if (element) this._animate(() => element.remove());
      this.blocks.delete(key);
      return Boolean(element);
    }
    this._animate(() => {
      if (!element) {
        element = document.createElement("p");
        element.className = "line";
        element.dir = "auto"; // each caption takes its own text's direction; the page's dir aligns them
        element.dataset.session = event.session;
        this.stack.append(element);
        this.blocks.set(key, element);
      }
      element.classList.toggle("partial", event.type === "partial");
      element.classList.toggle("final", event.type === "final");
      if (event.type === "final") {
        element.dataset.seq = event.seq;
        element.dataset.revision = event.revision || 0;
      }
      if (event.language) element.lang = event.language;
      const stable = event.type === "final" ? event.text.length : Math.min(event.stable || 0, event.text.length);
      this._fill(element, event.text, stable);
      this._prune();
    });
    return true;
  }

  /** A final's translation: shown in its line, or kept for it (it may come first from a resume). */
  _translate(event) {
    if (this.lang === "original" || !event.text) return false;
    this.translations.set(event.seq, event.text);
    if (this.translations.size > 200) this.translations.delete(this.translations.keys().next().value);
    const element = this.stack.querySelector(`.line.final[data-seq="${event.seq}"]`);
    if (!element) return false;
    this._animate(() => this._fill(element, element.dataset.text || "", (element.dataset.text || "").length));
    return true;
  }

  /** An editor's correction: the line of its final, if still shown, takes the new text in place. */
  _correct(event) {
    const element = this.stack.querySelector(`.line.final[data-seq="${event.seq}"]`);
    if (!element || Number(element.dataset.revision || 0) >= event.revision) return false;
    element.dataset.revision = event.revision;
    if (!event.text) {
      // Blanked by an editor (a line the model made up): it goes.
      this._animate(() => element.remove());
      for (const [key, line] of this.blocks) if (line === element) this.blocks.delete(key);
      return true;
    }
    if (event.speaker) element.dataset.speaker = event.speaker;
    this._animate(() => this._fill(element, event.text, event.text.length));
    return true;
  }

  /** The label a line shows: an editor's speaker for it, else its session's (when labels show). */
  _lineLabel(element) {
    const label = this._label(element.dataset.session);
    return label && element.dataset.speaker ? element.dataset.speaker : label;
  }

  _fill(element, text, stable) {
    element.dataset.text = text;
    const translated = element.classList.contains("final") ? this.translations.get(Number(element.dataset.seq)) : undefined;
    if (this.lang === "en" && element.classList.contains("final")) {
      element.classList.toggle("awaiting", translated === undefined);
      if (translated !== undefined) {
        text = translated;
        stable = translated.length;
      }
    }
    element.replaceChildren();
    const label = this._lineLabel(element);
    if (label) {
      const speaker = document.createElement("span");
      speaker.className = "speaker";
      speaker.textContent = `${label}: `;
      element.append(speaker);
    }
    const settled = document.createElement("span");
    settled.className = "settled";
    settled.textContent = text.slice(0, stable);
    const tentative = document.createElement("span");
    tentative.className = "tentative";
    tentative.textContent = text.slice(stable);
    element.append(settled, tentative);
    if (this.lang === "both" && translated !== undefined) {
      const line = document.createElement("span");
      line.className = "translation";
      line.lang = "en";
      line.textContent = translated;
      element.append(line);
    }
  }

  clear() {
    this.stack.replaceChildren();
    this.blocks.clear();
  }

  _label(session) {
    const several = this.sessions.size > 1;
    if (this.speakers === "never" || (this.speakers === "auto" && !several)) return "";
    return this.sessions.get(session) || "";
  }

  _relabel() {
    for (const element of this.stack.querySelectorAll(".line")) {
      const label = this._lineLabel(element);
      let speaker = element.querySelector(".speaker");
      if (label && !speaker) {
        speaker = document.createElement("span");
        speaker.className = "speaker";
        element.prepend(speaker);
      }
      if (speaker) speaker.textContent = label ? `${label}: ` : "";
    }
  }

  _prune() {
    // Keep a few lines beyond those visible so a growing partial never exposes a gap.
    const lines = this.stack.querySelectorAll(".line");
    for (let i = 0; i < lines.length - this.keep; i++) {
      const line = lines[i];
      for (const [key, element] of this.blocks) if (element === line) this.blocks.delete(key);
      line.remove();
    }
  }

  _animate(change) {
    // FLIP: measure, change, then start from the old position and glide to the new one.
    const before = this.stack.offsetHeight;
    change();
    const delta = this.stack.offsetHeight - before;
    if (delta <= 0 || matchMedia("(prefers-reduced-motion: reduce)").matches) return;
    this.stack.style.transition = "none";
    this.stack.style.transform = `translateY(${delta}px)`;
    void this.stack.offsetHeight; // commit the start position before transitioning
    this.stack.style.transition = "transform 220ms ease-out";
    this.stack.style.transform = "translateY(0)";
  }
}
