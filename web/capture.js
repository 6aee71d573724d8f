// The speaker's page: microphone -> AudioWorklet (16-bit PCM) -> /v1/publish, with the
// room's captions from this speaker shown as they come back.
import { CaptionBoard, pageParams, socketUrl } from "/static/captions.js";

const params = pageParams();
const room = params.room || "default";
const $ = (id) => document.getElementById(id);
const board = new CaptionBoard($("stack"), { keep: 20 });
const MAX_BUFFERED_CHUNKS = 100; // 10 s of audio held while reconnecting, then the oldest goes

$("room-name").textContent = room;
$("speaker").value = params.speaker || localStorage.getItem("flashcaption.speaker") || "";
$("context").value = params.context || "";
for (const [id, page] of [["overlay-link", "/overlay"], ["transcript-link", "/transcript"]]) {
  const url = new URL(page, location.href);
  url.searchParams.set("room", room);
  if (params.token) url.searchParams.set("token", params.token);
  $(id).href = url.toString();
}

let audio = null; // {context, stream, node}
let socket = null;
let session = null; // the server's session id, for resuming after a dropped connection
let pending = []; // chunks recorded while not connected
let ending = false;
let retries = 0;
let retryTimer = null;

function setState(text, kind = "") {
  $("state").textContent = text;
  $("state").dataset.kind = kind;
  document.body.dataset.state = kind || "idle";
}

function microphoneProblem(error) {
  switch (error && error.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone access was denied. Allow the microphone for this site (the icon at the left of the address bar), then press Start again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found. Plug one in or pick another, then press Start again.";
    case "NotReadableError":
      return "The microphone could not be opened: another program may be using it.";
    default:
      return `The microphone could not be started: ${error && error.message ? error.message : error}`;
  }
}

async function listMicrophones() {
  const select = $("microphone");
  const chosen = select.value;
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "audioinput");
  select.replaceChildren(new Option("Default microphone", ""));
  devices.forEach((device, index) => {
    if (device.deviceId && device.deviceId !== "default") {
      select.append(new Option(device.label || `Microphone ${index + 1}`, device.deviceId));
    }
  });
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
}

async function openMicrophone() {
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    throw new Error(
      "This page can use the microphone only over https:// or on localhost. Serve FlashCaption with --certfile/--keyfile or behind a TLS proxy.",
    );
  }
  const constraints = {
    channelCount: 1,
    echoCancellation: $("echo").checked,
    noiseSuppression: $("noise").checked,
    autoGainControl: $("gain").checked,
  };
  if ($("microphone").value) constraints.deviceId = { exact: $("microphone").value };
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: constraints });
  } catch (error) {
    const problem = new Error(microphoneProblem(error));
    problem.microphone = true;
    throw problem;
  }
  // Ask the browser to resample to 16 kHz; where it cannot, send the device rate and let the
  // server resample (sample_rate tells it which).
  let context;
  try {
    context = new AudioContext({ sampleRate: 16000 });
  } catch {
    context = new AudioContext();
  }
  await context.audioWorklet.addModule("/static/pcm-worklet.js");
  const node = new AudioWorkletNode(context, "pcm-capture", {
    numberOfOutputs: 1,
    processorOptions: { chunkSamples: Math.round(context.sampleRate / 10) },
  });
  node.port.onmessage = (message) => onChunk(message.data);
  const silent = new GainNode(context, { gain: 0 }); // keeps the graph pulled, plays nothing
  context.createMediaStreamSource(stream).connect(node).connect(silent).connect(context.destination);
  await context.resume();
  listMicrophones().catch(() => {});
  return { context, stream, node };
}

function onChunk({ pcm, peak, rms }) {
  const percent = Math.min(100, Math.round(Math.sqrt(rms) * 180));
  $("level").style.width = `${percent}%`;
  $("level").classList.toggle("loud", peak > 0.98);
  $("meter").setAttribute("aria-valuenow", String(percent));
  if (ending) return;
  if (socket && socket.readyState === WebSocket.OPEN && socket.ready) {
    socket.send(pcm);
  } else {
    pending.push(pcm);
    if (pending.length > MAX_BUFFERED_CHUNKS) pending.shift();
  }
}

// Another node to publish to (an overloaded refusal's retry_url), and how many moves in a row.
let node = null;
let hops = 0;
const MAX_HOPS = 3;

function connect() {
  const query = {
    room,
    speaker: $("speaker").value.trim(),
    sample_rate: audio.context.sampleRate,
    context: session ? "" : $("context").value.trim(),
    token: params.token,
    resume: session,
    translate: params.translate, // translate=en on this page's URL: its finals in English too
  };
  if (session) delete query.speaker; // a resumed session keeps its speaker
  setState(session ? "Reconnecting…" : "Connecting…");
  let ws;
  try {
    ws = new WebSocket(socketUrl("/v1/publish", query, node));
  } catch (error) {
    // An address the page may not open (ws:// from an https page): stay with this page's server.
    node = null;
    ws = new WebSocket(socketUrl("/v1/publish", query));
  }
  ws.binaryType = "arraybuffer";
  socket = ws;
  let refused = null;
  ws.onmessage = (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    if (event.type === "ready") {
      hops = 0;
      session = event.session;
      ws.ready = true;
      retries = 0;
      for (const chunk of pending.splice(0)) ws.send(chunk);
      setState(`Live: speak and your captions appear below (${event.model}).`, "live");
    } else if (event.type === "error") {
      refused = event;
    } else if (event.type === "partial" || event.type === "final") {
      board.show(event);
    }
  };
  ws.onclose = (close) => {
    if (socket !== ws) return;
    socket = null;
    if (ending) {
      finish(close.code === 1000 ? "Stopped. Your captions are in the room's transcript." : "Stopped.");
      return;
    }
    if (refused && refused.code === "unauthorized") {
      stopAudio();
      finish(`The server refused the token: ${refused.message}. Ask for a link with a valid publish token.`, "error");
      return;
    }
    if (!(refused && refused.retry_url)) node = null; // back to this page's server (behind its load balancer)
    if (refused && refused.code === "overloaded" && refused.retry_url && hops < MAX_HOPS) {
      // This node is full; the server named another with room (nodes sharing a store): go there now.
      hops += 1;
      node = refused.retry_url;
      setState(`This server is busy: moving to ${node}…`);
      connect();
      return;
    }
    if (refused && refused.code === "bad_request" && session) {
      session = null; // the session could not be resumed (too late): start a new one
    } else if (refused && refused.code !== "overloaded") {
      stopAudio();
      finish(`The server refused the stream: ${refused.message}`, "error");
      return;
    }
    board.show({ type: "reset" });
    retries += 1;
    const retryIn = Math.min(10, 0.5 * 2 ** (retries - 1));
    const why = refused ? refused.message : "the connection was lost";
    setState(`Not connected (${why}). Retrying in ${retryIn.toFixed(1)} s; your speech is kept meanwhile.`, "error");
    retryTimer = setTimeout(connect, retryIn * 1000);
  };
}

function stopAudio() {
  if (!audio) return;
  audio.node.port.onmessage = null;
  audio.stream.getTracks().forEach((track) => track.stop());
  audio.context.close();
  audio = null;
  $("level").style.width = "0";
}

function finish(text, kind = "") {
  clearTimeout(retryTimer);
  setState(text, kind);
  $("start").disabled = false;
  $("stop").disabled = true;
  ending = false;
}

$("start").addEventListener("click", async () => {
  $("start").disabled = true;
  localStorage.setItem("flashcaption.speaker", $("speaker").value.trim());
  session = null;
  pending = [];
  retries = 0;
  setState("Opening the microphone…");
  try {
    audio = await openMicrophone();
  } catch (error) {
    finish(error.message, "error");
    return;
  }
  $("stop").disabled = false;
  connect();
});

$("stop").addEventListener("click", () => {
  $("stop").disabled = true;
  ending = true;
  stopAudio();
  clearTimeout(retryTimer);
  if (socket && socket.readyState === WebSocket.OPEN && socket.ready) {
    for (const chunk of pending.splice(0)) socket.send(chunk);
    socket.send(JSON.stringify({ type: "end" }));
    setState("Finishing the last caption…");
  } else {
    if (socket) socket.close();
    finish("Stopped.");
  }
});

if (navigator.mediaDevices) listMicrophones().catch(() => {});
