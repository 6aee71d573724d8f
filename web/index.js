// The start page: links for a room, and what the server runs.
const $ = (id) => document.getElementById(id);
const PAGES = {
  capture: ["/capture", {}],
  overlay: ["/overlay", {}],
  boxed: ["/overlay", { bg: "000000b0", outline: "none", lines: "3" }],
  transcript: ["/transcript", {}],
};

function update() {
  const room = /^[A-Za-z0-9_-]{1,64}$/.test($("room").value) ? $("room").value : "demo";
  for (const [name, [path, extra]] of Object.entries(PAGES)) {
    const url = new URL(path, location.href);
    url.searchParams.set("room", room);
    for (const [key, value] of Object.entries(extra)) url.searchParams.set(key, value);
    if ($("token").value.trim()) url.searchParams.set("token", $("token").value.trim());
    $(`${name}-url`).value = url.toString();
    $(`${name}-open`).href = url.toString();
  }
}

for (const button of document.querySelectorAll("[data-copy]")) {
  button.addEventListener("click", async () => {
    const field = $(button.dataset.copy);
    try {
      await navigator.clipboard.writeText(field.value);
    } catch {
      field.select(); // no clipboard access (plain http off localhost): leave it selected to copy by hand
      document.execCommand("copy");
    }
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = "Copy"), 1500);
  });
}

$("room").addEventListener("input", update);
$("token").addEventListener("input", update);
const params = new URLSearchParams(location.search);
if (params.get("room")) $("room").value = params.get("room");
if (params.get("token")) $("token").value = params.get("token");
update();

fetch("/healthz")
  .then((response) => response.json())
  .then((health) => {
    $("model").textContent = health.model;
    $("device").textContent = health.device;
  })
  .catch(() => ($("server").textContent = "The server did not answer /healthz."));
