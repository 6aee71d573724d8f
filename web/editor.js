// A captioner's page: the room's finals as an editable list, keyboard first, and the live partial.
// Corrections go to the server on the viewer's connection ({type: "correct"}); every page of the
// room, this one included, shows them when the server sends them back as "correction" events.
import { CaptionFeed, pageParams } from "/static/captions.js";

const params = pageParams();
const room = params.room || "default";
const $ = (id) => document.getElementById(id);
const list = $("finals");
const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
const rows = new Map(); // seq -> { item, text, speaker, revision }
let selected = null; // seq of the selected final
let editing = null; // { seq, field, input }

const nameInput = $("editor-name");
nameInput.value = params.editor || localStorage.getItem("flashcaption-editor") || "";
$("room-name").textContent = room;

// What the page has done, for anyone checking it (the browser tests do).
window.flashcaption = { finals: [], corrections: [], refused: [], terms: [], suggested: [], state: "connecting" };

function status(text, problem = false) {
  $("status").textContent = text;
  $("status").classList.toggle("problem", problem);
}

function fill(row) {
  const { item } = row;
  item.querySelector(".speaker").textContent = row.speaker;
  item.querySelector(".text").textContent = row.text;
  item.querySelector(".rev").textContent = row.revision ? `r${row.revision}` : "";
  item.classList.toggle("corrected", row.revision > 0);
}

function addFinal(event) {
  if (rows.has(event.seq) || (!event.text && !event.revision)) return; // an empty final as captioned: nothing was said
  const nearBottom = innerHeight + scrollY >= document.body.scrollHeight - 80;
  const item = document.createElement("li");
  item.dataset.seq = event.seq;
  item.tabIndex = -1;
  const when = new Date(1000 * (event.wall_start ?? Date.now() / 1000));
  for (const [name, text] of [["seq", `#${event.seq}`], ["time", clock.format(when)], ["speaker", ""], ["text", ""], ["rev", ""]]) {
    const cell = document.createElement(name === "time" ? "time" : "span");
    cell.className = name;
    cell.textContent = text;
    item.append(cell);
  }
  item.addEventListener("click", () => select(event.seq));
  item.addEventListener("dblclick", () => edit("text"));
  list.append(item);
  const row = { item, text: event.text, speaker: event.speaker || "", revision: event.revision || 0 };
  rows.set(event.seq, row);
  fill(row);
  window.flashcaption.finals.push(event.seq);
  if (selected === null) select(event.seq);
  if (nearBottom && !editing) scrollTo(0, document.body.scrollHeight);
}

function select(seq) {
  if (seq === null || !rows.has(seq)) return;
  if (selected !== null && rows.has(selected)) rows.get(selected).item.classList.remove("selected");
  selected = seq;
  const { item } = rows.get(seq);
  item.classList.add("selected");
  item.scrollIntoView({ block: "nearest" });
}

function neighbour(seq, step) {
  const seqs = [...rows.keys()];
  const at = seqs.indexOf(seq);
  return at === -1 ? null : seqs[Math.min(seqs.length - 1, Math.max(0, at + step))];
}

function edit(field) {
  if (selected === null || editing) return;
  const row = rows.get(selected);
  const cell = row.item.querySelector(field === "text" ? ".text" : ".speaker");
  const input = document.createElement("input");
  input.value = field === "text" ? row.text : row.speaker;
  input.maxLength = field === "text" ? 2000 : 64;
  input.setAttribute("aria-label", field === "text" ? `Text of final ${selected}` : `Speaker of final ${selected}`);
  cell.replaceChildren(input);
  // The revision and text edited: a correction made meanwhile by someone else makes this one a
  // conflict (refused by the server), rather than silently replacing theirs.
  editing = { seq: selected, field, input, base: row.revision, original: input.value };
  input.focus();
  input.select();
  input.addEventListener("keydown", (key) => {
    if (key.isComposing || key.keyCode === 229) return; // an input method's own Enter: confirming a candidate
    // The page's own keys (Enter: edit) must not see the keys that end this edit.
    if (["Enter", "Escape", "Tab"].includes(key.key)) key.stopPropagation();
    if (key.key === "Enter") {
      key.preventDefault();
      finish(true);
    } else if (key.key === "Escape") {
      key.preventDefault();
      finish(false);
    } else if (key.key === "Tab") {
      key.preventDefault();
      const next = neighbour(editing.seq, key.shiftKey ? -1 : 1);
      const field = editing.field;
      finish(true);
      if (next !== null) {
        select(next);
        edit(field);
      }
    }
  });
  input.addEventListener("blur", () => editing && editing.input === input && finish(true));
}

/** Close the open edit; with save, send the correction if anything changed. */
function finish(save) {
  const { seq, field, input, base, original } = editing;
  editing = null;
  const row = rows.get(seq);
  const value = input.value.trim().replace(/\s+/g, " ");
  fill(row);
  // An empty text is a correction too: a line the model made up is blanked.
  if (!save || value === original) return;
  const editor = nameInput.value.trim();
  localStorage.setItem("flashcaption-editor", editor);
  const correction = { type: "correct", seq, base, text: field === "text" ? value : row.text };
  if (field === "speaker") correction.speaker = value;
  if (!feed.send(correction)) {
    status("Not connected: the correction was not sent. It will not be kept; make it again once connected.", true);
    return;
  }
  row.item.classList.add("pending");
  row.item.classList.remove("refused");
}

function corrected(event) {
  const row = rows.get(event.seq);
  if (!row || row.revision >= event.revision) return;
  Object.assign(row, { text: event.text, speaker: event.speaker, revision: event.revision });
  row.item.classList.remove("pending", "refused");
  row.item.title = `Corrected${event.editor ? ` by ${event.editor}` : ""} at ${clock.format(new Date(1000 * event.at))}`;
  if (!editing || editing.seq !== event.seq) fill(row);
  window.flashcaption.corrections.push([event.seq, event.revision]);
  status(`#${event.seq} corrected${event.editor ? ` by ${event.editor}` : ""}.`);
}

function refused(event) {
  window.flashcaption.refused.push(event);
  const row = event.seq !== null ? rows.get(event.seq) : null;
  if (row) row.item.classList.replace("pending", "refused");
  status(`Not corrected${event.seq !== null ? ` (#${event.seq})` : ""}: ${event.message}`, true);
}

/** The room's terms, and the ones its corrections suggest (a button each: one action adds it). */
function showTerms(event) {
  window.flashcaption.terms = event.terms;
  window.flashcaption.suggested = event.suggested;
  $("term-list").replaceChildren(...event.terms.map((term) => {
    const chip = document.createElement("span");
    chip.className = "term";
    chip.textContent = term;
    return chip;
  }));
  $("suggestions").replaceChildren(...event.suggested.map((term) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `+ ${term}`;
    button.title = "Corrected more than once: add it to the room's context";
    button.addEventListener("click", () => addTerm(term));
    return button;
  }));
}

function addTerm(term) {
  if (term.trim() && !feed.send({ type: "add_term", term: term.trim() })) status("Not connected: the term was not added.", true);
}

const termInput = $("term-input");
termInput.addEventListener("keydown", (key) => {
  key.stopPropagation();
  if (key.isComposing || key.keyCode === 229) return;
  if (key.key === "Enter") {
    key.preventDefault();
    addTerm(termInput.value);
  }
  if (key.key === "Enter" || key.key === "Escape") {
    termInput.value = "";
    termInput.hidden = true;
  }
});

document.addEventListener("keydown", (key) => {
  if (editing || key.isComposing || key.altKey || key.ctrlKey || key.metaKey) return;
  if (["INPUT", "BUTTON", "A"].includes(key.target.tagName)) return; // their own keys (Enter on a suggestion adds it)
  if (key.key === "t" || key.key === "T") {
    key.preventDefault();
    termInput.hidden = false;
    termInput.focus();
    return;
  }
  const moves = { ArrowDown: 1, j: 1, ArrowUp: -1, k: -1 };
  if (key.key in moves) {
    key.preventDefault();
    select(neighbour(selected, moves[key.key]));
  } else if (key.key === "End") {
    key.preventDefault();
    select([...rows.keys()].at(-1) ?? null);
  } else if (key.key === "Home") {
    key.preventDefault();
    select([...rows.keys()][0] ?? null);
  } else if (key.key === "Enter" || key.key === "F2") {
    key.preventDefault();
    edit("text");
  } else if (key.key === "s" || key.key === "S") {
    key.preventDefault();
    edit("speaker");
  }
});
nameInput.addEventListener("change", () => {
  localStorage.setItem("flashcaption-editor", nameInput.value.trim());
  feed.editor = nameInput.value.trim() || "editor"; // corrections after the next reconnect carry it
  feed.stop();
  feed.start();
});

const feed = new CaptionFeed({
  room,
  token: params.token,
  since: 0, // every final from the journal, then live
  editor: nameInput.value.trim() || "editor", // named: in a room under review, editors see finals before the audience
  onEvent: (event) => {
    if (event.type === "final") {
      if (!Number.isInteger(event.seq)) return; // not numbered yet (the store is away): corrected once it is
      addFinal(event);
      $("live").textContent = "";
    } else if (event.type === "partial") {
      $("live").textContent = event.text;
    } else if (event.type === "reset") {
      $("live").textContent = "";
    } else if (event.type === "correction") {
      corrected(event);
    } else if (event.type === "correction_refused") {
      refused(event);
    } else if (event.type === "terms") {
      showTerms(event);
    }
  },
  onState: (state, detail) => {
    window.flashcaption.state = state;
    document.body.dataset.state = state;
    if (state === "live") status(`${rows.size} finals; live.`);
    if (state === "waiting") status(`Connection lost; retrying in ${detail.retryIn.toFixed(1)} s.`, true);
    if (state === "refused") status(`The server refused: ${detail.message}`, true);
  },
});
feed.start();
