// The overlay: a room's captions and nothing else, styled from URL parameters (see the / page).
import { CaptionBoard, CaptionFeed, pageParams } from "/static/captions.js";

const params = pageParams();
const root = document.documentElement.style;

/** A colour parameter: CSS colours, or hex without the "#" (awkward to put in a URL). */
function colour(value) {
  if (!value) return null;
  const candidate = /^[0-9a-f]{3,8}$/i.test(value) ? `#${value}` : value;
  return CSS.supports("color", candidate) ? candidate : null;
}

function length(value, unit) {
  if (!value) return null;
  const candidate = /^\d+(\.\d+)?$/.test(value) ? `${value}${unit}` : value;
  return CSS.supports("width", candidate) ? candidate : null;
}

function number(value, low, high) {
  const parsed = Number(value);
  return value && Number.isFinite(parsed) ? Math.min(high, Math.max(low, parsed)) : null;
}

// [URL parameter, custom property, value or null when absent or invalid]
const styles = [
  ["font", "--font", params.font && CSS.supports("font-family", params.font) ? params.font : null],
  ["size", "--size", length(params.size, "px")],
  ["color", "--color", colour(params.color)],
  ["partial_opacity", "--partial-opacity", number(params.partial_opacity, 0.1, 1)],
  ["outline", "--outline", colour(params.outline)],
  ["bg", "--box", colour(params.bg)],
  ["page_bg", "--page", colour(params.page_bg)],
  ["lines", "--lines", number(params.lines, 1, 10)],
  ["tcolor", "--tcolor", colour(params.tcolor)],
  ["max_width", "--max-width", length(params.max_width, "vw")],
  ["align", "--align", ["center", "left", "right", "start", "end"].includes(params.align) ? params.align : null],
  ["margin", "--edge", length(params.margin, "vh")],
];
for (const [param, property, value] of styles) {
  if (value !== null) root.setProperty(property, String(value));
  else if (params[param] !== undefined && !(param === "outline" && params.outline === "none")) {
    console.warn(`overlay: ignored ${param}=${params[param]}`);
  }
}
if (params.outline === "none") document.body.classList.add("no-outline");
if (["top", "middle", "bottom"].includes(params.position)) document.body.classList.add(params.position);
if (["ltr", "rtl", "auto"].includes(params.dir)) document.documentElement.dir = params.dir;
if (params.lang) document.documentElement.lang = params.lang;

const stack = document.getElementById("stack");
const spoken = document.getElementById("spoken");
const lang = ["original", "en", "both"].includes(params.lang) ? params.lang : "original";
if (params.lang !== undefined && lang !== params.lang) console.warn(`overlay: ignored lang=${params.lang} (original, en or both)`);
const board = new CaptionBoard(stack, { speakers: params.speakers || "auto", lang });
const hideAfter = number(params.hide_after, 0.5, 3600);
let hideTimer = null;

// What the page has shown, for anyone checking it (the browser tests do): seqs in order.
window.flashcaption = { finals: [], corrections: [], translations: [], state: "connecting" };

const unnumbered = new Set(); // "session/segment" of finals shown before they were numbered

function shown(event) {
  if (!board.show(event) || event.type === "reset") return;
  if (event.type === "translation") {
    window.flashcaption.translations.push(event.seq);
    return;
  }
  if (event.type === "correction") {
    window.flashcaption.corrections.push([event.seq, event.revision]);
    return; // a line changed in place: nothing new was said
  }
  if (event.type === "final" && event.text) {
    // A final shown before the server's store numbered it comes again numbered: said once.
    const key = `${event.session}/${event.segment}`;
    if (unnumbered.delete(key)) return;
    if (!Number.isInteger(event.seq)) unnumbered.add(key);
    window.flashcaption.finals.push(event.seq);
    if (window.flashcaption.finals.length > 5000) window.flashcaption.finals.splice(0, 1000);
    const line = document.createElement("p");
    line.textContent = event.text;
    spoken.append(line);
    while (spoken.childElementCount > 3) spoken.firstElementChild.remove();
  }
  if (hideAfter !== null) {
    document.body.classList.remove("idle");
    clearTimeout(hideTimer);
    hideTimer = setTimeout(() => document.body.classList.add("idle"), hideAfter * 1000);
  }
}

const since = params.since !== undefined && /^\d+$/.test(params.since) ? Number(params.since) : null;
const feed = new CaptionFeed({
  room: params.room || "default",
  token: params.token,
  since,
  onEvent: shown,
  onState: (state, detail) => {
    window.flashcaption.state = state;
    document.body.dataset.state = state;
    // An overlay shows captions only; problems go to the console for whoever set it up.
    if (state === "refused") console.error(`overlay: refused by the server: ${detail.message}`);
    if (state === "waiting") console.warn(`overlay: connection lost, retrying in ${detail.retryIn.toFixed(1)} s`);
  },
});
feed.start();
