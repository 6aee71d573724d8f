// A room's running transcript: every final from the journal, then live ones, searchable.
import { CaptionFeed, pageParams } from "/static/captions.js";

const params = pageParams();
const room = params.room || "default";
const $ = (id) => document.getElementById(id);
const entries = $("entries");
const partials = new Map(); // "session/segment" -> <li> of a partial still being spoken
const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
let finals = 0;

$("room-name").textContent = room;
for (const format of ["srt", "vtt", "txt"]) {
  const url = new URL(`/v1/rooms/${encodeURIComponent(room)}/transcript`, location.href);
  url.searchParams.set("format", format);
  if (params.token) url.searchParams.set("token", params.token);
  $(format).href = url.toString();
}

function query() {
  return $("search").value.trim().toLowerCase();
}

/** Fill an entry's text, marking the search words in it. */
function render(item) {
  const text = item.querySelector(".text");
  const words = query();
  text.replaceChildren();
  const raw = item.dataset.text;
  if (!words) {
    text.textContent = raw;
  } else {
    const lower = raw.toLowerCase();
    let at = 0;
    for (let found = lower.indexOf(words); found !== -1; found = lower.indexOf(words, at)) {
      text.append(raw.slice(at, found));
      const mark = document.createElement("mark");
      mark.textContent = raw.slice(found, found + words.length);
      text.append(mark);
      at = found + words.length;
    }
    text.append(raw.slice(at));
  }
  item.hidden = Boolean(words) && !(item.dataset.text + " " + item.dataset.speaker).toLowerCase().includes(words);
}

function entry(event) {
  const item = document.createElement("li");
  const time = document.createElement("time");
  const when = new Date(1000 * (event.wall_start ?? Date.now() / 1000));
  time.dateTime = when.toISOString();
  time.textContent = clock.format(when);
  const body = document.createElement("div");
  if (event.speaker) {
    const speaker = document.createElement("span");
    speaker.className = "speaker";
    speaker.textContent = `${event.speaker}:`;
    body.append(speaker);
  }
  const text = document.createElement("span");
  text.className = "text";
  body.append(text);
  item.append(time, body);
  item.dataset.speaker = event.speaker || "";
  return item;
}

/** An editor's correction: the final's entry takes the new text (and speaker), marked as corrected. */
function correct(event) {
  const item = entries.querySelector(`li[data-seq="${event.seq}"]`);
  if (!item || Number(item.dataset.revision || 0) >= event.revision) return;
  item.dataset.revision = event.revision;
  item.dataset.text = event.text;
  item.dataset.speaker = event.speaker || "";
  let speaker = item.querySelector(".speaker");
  if (event.speaker && !speaker) {
    speaker = document.createElement("span");
    speaker.className = "speaker";
    item.querySelector(".text").before(speaker);
  }
  if (speaker) speaker.textContent = event.speaker ? `${event.speaker}:` : "";
  item.classList.add("corrected");
  item.classList.toggle("blanked", !event.text); // blanked by an editor: hidden
  item.title = `Corrected${event.editor ? ` by ${event.editor}` : ""} at ${clock.format(new Date(1000 * event.at))}`;
  render(item);
}

/** A final's translation, in the column beside it (the page grows the column when one comes). */
function translate(event) {
  const item = entries.querySelector(`li[data-seq="${event.seq}"]`);
  if (!item || !event.text) return;
  let cell = item.querySelector(".translation");
  if (!cell) {
    cell = document.createElement("div");
    cell.className = "translation";
    cell.lang = event.language;
    item.append(cell);
  }
  cell.textContent = event.text;
  document.body.classList.add("translated");
}

function show(event) {
  if (event.type === "translation") return translate(event);
  if (event.type === "correction") return correct(event);
  if (event.type === "correction_refused" || event.type === "terms") return;
  const nearBottom = innerHeight + scrollY >= document.body.scrollHeight - 80;
  if (event.type === "reset") {
    for (const [key, item] of partials) {
      if (item.classList.contains("unnumbered")) continue; // a final: its numbered copy replaces it
      item.remove();
      partials.delete(key);
    }
    return;
  }
  const key = `${event.session}/${event.segment}`;
  let item = partials.get(key);
  if (event.type === "partial") {
    if (!item) {
      item = entry(event);
      item.classList.add("partial");
      partials.set(key, item);
      entries.append(item);
    }
  } else if (!Number.isInteger(event.seq)) {
    // Not numbered yet (the server's store is away): shown until the numbered final replaces it.
    if (!event.text) {
      if (item) item.remove();
      partials.delete(key);
      return;
    }
    if (!item) {
      item = entry(event);
      partials.set(key, item);
      entries.append(item);
    }
    item.classList.remove("partial");
    item.classList.add("unnumbered");
  } else {
    partials.delete(key);
    if (!event.text && !event.revision) {
      if (item) item.remove();
      return;
    }
    const final = entry(event);
    final.dataset.seq = event.seq;
    final.dataset.revision = event.revision || 0;
    if (event.revision) final.classList.add("corrected");
    if (!event.text) final.classList.add("blanked");
    if (item) item.replaceWith(final);
    else entries.append(final);
    item = final;
    finals += 1;
    $("status").textContent = `${finals} caption${finals === 1 ? "" : "s"}, live.`;
  }
  item.dataset.text = event.text;
  render(item);
  if (nearBottom && !query()) scrollTo(0, document.body.scrollHeight);
}

$("search").addEventListener("input", () => {
  for (const item of entries.children) render(item);
});

const feed = new CaptionFeed({
  room,
  token: params.token,
  since: 0, // the whole transcript from the journal, then live
  onEvent: show,
  onState: (state, detail) => {
    document.body.dataset.state = state;
    if (state === "live") $("status").textContent = `${finals} caption${finals === 1 ? "" : "s"}, live.`;
    if (state === "waiting") $("status").textContent = `Connection lost; retrying in ${detail.retryIn.toFixed(1)} s.`;
    if (state === "refused") $("status").textContent = `The server refused: ${detail.message}`;
  },
});
feed.start();
