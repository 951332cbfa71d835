// The rating page: asks the server for a unit, shows it, sends one judgement per key press
// or click, and shows the next unit the answer carries. No framework, no network beyond the
// local server.
"use strict";

const $ = (id) => document.getElementById(id);
// One id per tab, kept across reloads (sessionStorage), so a reload gets its own unit back
// and a second tab gets another one.
let client = sessionStorage.getItem("kzoo-rate-client");
if (!client) {
  client = Math.random().toString(36).slice(2) + Date.now().toString(36);
  sessionStorage.setItem("kzoo-rate-client", client);
}
const params = new URLSearchParams(location.search);
let mode = params.get("mode") === "thumbs" ? "thumbs" : "pairs";
let unit = null;
let busy = false;
let pollTimer = null;
// Answers can arrive out of order (a mode switch right after the page opens): only the
// answer to the latest request is shown.
let asked = 0;

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function render(data) {
  document.body.dataset.ready = "1";  // for tests: the server's answer is on the page
  unit = data.unit;
  $("mode").textContent = "Mode: " + data.mode;
  $("file").textContent = data.title || "";
  const p = data.progress;
  $("progress").textContent = p.judged + " / " + p.total + " judged";
  $("bar").max = Math.max(p.total, 1);
  $("bar").value = p.judged;
  const s = data.sampling;
  const sampling = !unit && s && s.running;
  $("sampling").hidden = !sampling;
  if (s && s.error) status("Sampling stopped: " + s.error, true);
  if (sampling) $("sampling-text").textContent =
      "Sampling completions… " + s.done + " / " + s.total + " prompts";
  $("done").hidden = !!unit || sampling;
  $("done-file").textContent = data.title || "";
  $("unit").hidden = !unit;
  $("editor").hidden = true;
  clearTimeout(pollTimer);
  if (sampling) pollTimer = setTimeout(next, 500);
  if (!unit) return;
  $("prompt").textContent = unit.prompt;
  const pair = unit.kind === "pair";
  $("pair").hidden = !pair;
  $("pair-actions").hidden = !pair;
  $("single").hidden = pair;
  $("single-actions").hidden = pair;
  if (pair) {
    $("left").textContent = unit.completions[0];
    $("right").textContent = unit.completions[1];
  } else {
    $("completion").textContent = unit.completions[0];
  }
  document.body.dataset.unit = unit.id;  // for tests and screenshots: which unit is shown
}

async function call(url, body) {
  const options = body ? {method: "POST", headers: {"Content-Type": "application/json"},
                          body: JSON.stringify(body)} : {};
  const response = await fetch(url, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

async function next() {
  try {
    const mine = ++asked;
    const data = await call("/api/next?client=" + encodeURIComponent(client) + "&mode=" + mode);
    if (mine === asked) render(data);
  } catch (error) {
    status("Could not reach the server: " + error.message, true);
    pollTimer = setTimeout(next, 2000);
  }
}

const NAMES = {left: "left better", right: "right better", tie: "tie", both_bad: "both bad",
               edit: "correction saved", up: "thumbs up", down: "thumbs down"};

async function judge(judgement, extra) {
  if (!unit || busy) return;
  busy = true;
  document.querySelectorAll("button").forEach((b) => { b.disabled = true; });
  try {
    const mine = ++asked;
    const data = await call("/api/judge", Object.assign(
        {client: client, mode: mode, id: unit.id, judgement: judgement}, extra || {}));
    status(data.recorded ? "Recorded: " + NAMES[judgement]
                         : "Already judged in another tab: not recorded again", false);
    if (mine === asked) render(data);
  } catch (error) {
    status("Not recorded: " + error.message, true);
  } finally {
    busy = false;
    document.querySelectorAll("button").forEach((b) => { b.disabled = false; });
  }
}

function openEditor() {
  if (!unit || unit.kind !== "pair") return;
  $("editor").hidden = false;
  $("edit-base").value = "left";
  $("edit-text").value = unit.completions[0];
  $("edit-text").focus();
}

function saveEdit() {
  judge("edit", {base: $("edit-base").value, text: $("edit-text").value});
}

function switchMode() {
  mode = mode === "pairs" ? "thumbs" : "pairs";
  params.set("mode", mode);
  history.replaceState(null, "", "?" + params.toString());
  next();
}

$("edit-base").addEventListener("change", () => {
  $("edit-text").value = unit.completions[$("edit-base").value === "left" ? 0 : 1];
});
$("left-better").onclick = () => judge("left");
$("right-better").onclick = () => judge("right");
$("tie").onclick = () => judge("tie");
$("both-bad").onclick = () => judge("both_bad");
$("edit").onclick = openEditor;
$("save-edit").onclick = saveEdit;
$("cancel-edit").onclick = () => { $("editor").hidden = true; };
$("thumbs-up").onclick = () => judge("up");
$("thumbs-down").onclick = () => judge("down");
$("mode").onclick = switchMode;

document.addEventListener("keydown", (event) => {
  const editing = !$("editor").hidden;
  if (editing) {  // typing goes to the text box; only these two keys act
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); saveEdit(); }
    if (event.key === "Escape") { $("editor").hidden = true; }
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey || event.target.tagName === "SELECT") return;
  const pair = unit && unit.kind === "pair";
  const keys = pair ? {"1": "left", "2": "right", "3": "tie", "4": "both_bad"}
                    : {"u": "up", "d": "down", "+": "up", "-": "down"};
  if (keys[event.key]) { event.preventDefault(); judge(keys[event.key]); }
  else if (event.key === "e" && pair) { event.preventDefault(); openEditor(); }
  else if (event.key === "t") { event.preventDefault(); switchMode(); }
});

next();
