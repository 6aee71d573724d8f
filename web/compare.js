// A room's finals beside what its shadow model (serve --shadow) made of the same audio, with the
// words they differ in marked: struck out in the captions, underlaid in the shadow's text.
import { CaptionFeed, pageParams } from "/static/captions.js";

const params = pageParams();
const room = params.room || "default";
const $ = (id) => document.getElementById(id);
const rows = new Map(); // seq -> { row, final, shadow }
const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
const totals = { compared: 0, words: 0, differing: 0, same: 0 };

$("room-name").textContent = room;

/** Words as compared: lower case, without punctuation (characters for scripts without spaces). */
function tokens(text) {
  const words = text.split(/\s+/).filter(Boolean);
  if (/[\u3040-\u30ff\u3400-\u9fff]/.test(text)) return Array.from(text.replace(/\s+/g, "")).map((c) => ({ shown: c, key: c }));
  return words.map((word) => ({ shown: word, key: word.toLowerCase().replace(/[^\p{L}\p{N}']/gu, "") }));
}

/** The word alignment of a and b (longest common subsequence), as [kind, token] pairs: "same", "del" (in a only), "ins" (in b only). */
function diff(a, b) {
  const n = a.length, m = b.length;
  const longest = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      longest[i][j] = a[i].key === b[j].key ? longest[i + 1][j + 1] + 1 : Math.max(longest[i + 1][j], longest[i][j + 1]);
    }
  }
  const steps = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i].key === b[j].key) steps.push(["same", a[i++], b[j++]]);
    else if (j < m && (i === n || longest[i][j + 1] >= longest[i + 1][j])) steps.push(["ins", null, b[j++]]);
    else steps.push(["del", a[i++], null]);
  }
  return steps;
}

/** One side of the alignment as text with its differing words marked. */
function marked(cell, steps, side) {
  cell.replaceChildren();
  const joiner = steps.some(([, a, b]) => (a || b).shown.length > 1) ? " " : "";
  for (const [kind, a, b] of steps) {
    const token = side === "primary" ? a : b;
    if (!token) continue;
    if (cell.childNodes.length) cell.append(joiner);
    if (kind === "same") cell.append(token.shown);
    else {
      const mark = document.createElement(side === "primary" ? "del" : "ins");
      mark.textContent = token.shown;
      cell.append(mark);
    }
  }
}

function entry(seq) {
  let entry = rows.get(seq);
  if (entry) return entry;
  const row = document.createElement("tr");
  row.dataset.seq = seq;
  row.innerHTML = '<td class="time"></td><td class="text primary"></td><td class="text shadow pending">waiting for the shadow…</td>';
  entry = { row, final: null, shadow: null };
  rows.set(seq, entry);
  const later = [...$("rows").children].find((other) => Number(other.dataset.seq) > seq);
  $("rows").insertBefore(row, later || null);
  return entry;
}

function draw(entry) {
  const [time, primary, shadow] = entry.row.children;
  if (entry.final) {
    const when = new Date(1000 * (entry.final.wall_start ?? Date.now() / 1000));
    time.textContent = clock.format(when);
    primary.textContent = entry.final.text;
  }
  if (!entry.final || !entry.shadow) return;
  shadow.classList.remove("pending");
  const steps = diff(tokens(entry.final.text), tokens(entry.shadow.text));
  marked(primary, steps, "primary");
  marked(shadow, steps, "shadow");
  const differing = steps.filter(([kind]) => kind !== "same").length;
  // An edit distance counts a substituted word once, where the alignment has it out and in.
  const substituted = Math.min(steps.filter(([kind]) => kind === "del").length, steps.filter(([kind]) => kind === "ins").length);
  entry.row.classList.toggle("same", differing === 0);
  totals.compared += 1;
  totals.words += steps.filter(([, a]) => a).length;
  totals.differing += differing - substituted;
  totals.same += differing === 0 ? 1 : 0;
  summarize();
}

function summarize() {
  $("compared").textContent = totals.compared;
  $("differ").textContent = totals.words ? (100 * totals.differing / totals.words).toFixed(1) : "–";
  $("agree").textContent = totals.compared ? `${Math.round(100 * totals.same / totals.compared)}%` : "–";
  $("waiting").textContent = [...rows.values()].filter((e) => e.final && e.final.text && !e.shadow).length;
}

const feed = new CaptionFeed({
  room,
  token: params.token,
  since: 0, // the room's whole journal, then live
  shadow: true,
  onReady: (ready) => {
    $("primary-name").textContent = ready.model;
    $("primary-head").textContent = `${ready.model} (captions)`;
  },
  onEvent: (event) => {
    if (event.type === "final" && event.text && Number.isInteger(event.seq)) {
      const item = entry(event.seq);
      item.final = event;
      draw(item);
      summarize();
    } else if (event.type === "shadow") {
      $("shadow-name").textContent = event.model;
      $("shadow-head").textContent = `${event.model} (shadow)`;
      const item = entry(event.seq);
      if (item.shadow) return; // already shown (a reconnect sends nothing twice, but be sure)
      item.shadow = event;
      draw(item);
    }
  },
  onState: (state, detail) => {
    $("status").textContent = {
      connecting: "Connecting…",
      live: "Live.",
      waiting: `Connection lost; retrying in ${Math.round(detail.retryIn || 0)} s.`,
      refused: `Refused: ${detail.message}`,
    }[state];
  },
});
feed.start();
