// lensfinder inspect: the grading page's script, served as a file (the Content-Security-Policy
// allows no inline script). Every value from the server is written as text with textContent,
// never parsed as markup: a catalogue cell or a grader name is data.
// Two modes: "browse" lists the scan's candidates by rank with their IDs and values; "queue"
// shows one item at a time behind an opaque token, with nothing but its pictures, whatever it is.
"use strict";
const $ = (id) => document.getElementById(id);
const views = (document.body.dataset.views || "vis-nisp").split(" ");
const state = { list: [], pos: 0, stretch: "asinh", zoom: false, token: null,
                mode: document.body.dataset.mode || "browse",
                view: document.body.dataset.view || views[0] };
const defaultGrader = () => document.body.dataset.grader || "grader";
const grader = () => $("grader").value.trim() || defaultGrader();
const query = (params) => new URLSearchParams(params).toString();

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function fmt(value) {
  if (value === null || value === undefined) return "-";
  if (typeof value === "number" && !Number.isInteger(value)) return value.toPrecision(4);
  return String(value);
}

async function loadList(keepId) {
  const params = { grader: grader(), score_min: $("smin").value || 0,
                   score_max: $("smax").value || 1, show: $("show").value };
  try {
    state.list = (await api("api/candidates?" + query(params))).candidates;
  } catch (error) { $("status").textContent = error.message; return; }
  const at = state.list.findIndex((c) => c.id === keepId);
  state.pos = at >= 0 ? at : 0;
  await show();
}

function setImages(id) {
  const base = state.mode === "queue" ? `api/item/${encodeURIComponent(id)}` : `api/image/${id}`;
  for (const band of ["colour", "VIS", "Y", "J", "H"]) {
    const params = { stretch: state.stretch, zoom: state.zoom };
    if (band === "colour") params.view = state.view;
    $(band).src = `${base}/${band}.png?${query(params)}`;
  }
}

function current() {
  return state.mode === "queue" ? state.token : (state.list[state.pos] || {}).id;
}

function clearDetail() {
  $("rank").textContent = "queue";
  $("cid").textContent = "hidden";
  $("mygrade").textContent = "-";
  $("consensus").textContent = "-";
  $("others").textContent = "";
  $("notes").value = "";
  $("quantities").replaceChildren();
}

function showItem(next) {
  // The same for every queue item: a count, the pictures, and nothing else.
  state.token = next.token;
  $("status").textContent = "";
  clearDetail();
  if (!state.token) {
    $("position").textContent = "queue empty: every candidate is graded by you or retired";
    for (const band of ["colour", "VIS", "Y", "J", "H"]) $(band).removeAttribute("src");
    return;
  }
  $("position").textContent = `item ${next.graded + 1}`;
  setImages(state.token);
}

async function loadQueue() {
  try {
    showItem(await api("api/queue?" + query({ grader: grader() })));
  } catch (error) { $("status").textContent = error.message; }
  loadMe();
}

async function loadMe() {
  let me;
  try { me = await api("api/me?" + query({ grader: grader() })); } catch (error) { return; }
  const skill = me.skill;
  const pm = (p, s) => `${p.toFixed(2)} ± ${s.toFixed(2)}`;
  $("me").textContent = `graded ${me.graded} · my skill (as of ${me.skill_as_of} grades): ` +
    `lenses seen as lenses ${pm(skill.p_lens, skill.p_lens_sigma)}, ` +
    `non-lenses as non-lenses ${pm(skill.p_not, skill.p_not_sigma)}`;
}

function setMode(mode) {
  state.mode = mode;
  $("mode").value = mode;
  $("browsing").hidden = mode === "queue";
  if (mode === "queue") loadQueue();
  else loadList(null);
}

async function show() {
  $("status").textContent = "";
  if (!state.list.length) {
    $("position").textContent = "no candidates match";
    return;
  }
  const item = state.list[state.pos];
  $("position").textContent = `${state.pos + 1} / ${state.list.length}`;
  history.replaceState(null, "", "#" + item.id);
  setImages(item.id);
  let detail;
  try {
    detail = await api(`api/candidates/${item.id}?` + query({ grader: grader() }));
  } catch (error) { $("status").textContent = error.message; return; }
  render(detail);
}

function render(detail) {
  const scan = detail.scan;
  $("rank").textContent = "#" + scan.rank;
  $("cid").textContent = scan.id;
  $("mygrade").textContent = detail.mine || "-";
  $("consensus").textContent = detail.consensus || "-";
  $("others").textContent = Object.entries(detail.grades).map(([k, v]) => `${k}:${v}`).join(" ");
  $("notes").value = detail.notes || "";
  const rows = Object.entries(scan).concat(Object.entries(detail.catalogue))
    .filter(([k]) => k !== "rank" && k !== "id")
    .map(([k, v]) => {
      const row = document.createElement("tr");
      for (const text of [k, fmt(v)]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    });
  $("quantities").replaceChildren(...rows);
  if (!detail.in_data) $("status").textContent = "this ID is not in the data";
  const item = state.list[state.pos];
  if (item && item.id === scan.id) { item.mine = detail.mine; item.consensus = detail.consensus; }
}

async function gradeQueued(letter) {
  if (!state.token) return;
  try {
    showItem(await api("api/queue", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: state.token, grade: letter, grader: grader(),
                             notes: $("notes").value }),
    }));
  } catch (error) { $("status").textContent = "not saved: " + error.message; return; }
  loadMe();
}

async function grade(letter) {
  if (state.mode === "queue") return gradeQueued(letter);
  const item = state.list[state.pos];
  if (!item) return;
  try {
    const detail = await api("api/grades", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id: item.id, grade: letter, grader: grader(),
                             notes: $("notes").value }),
    });
    render(detail);
  } catch (error) { $("status").textContent = "not saved: " + error.message; return; }
  move(1);
}

function move(step) {
  if (state.mode === "queue") return;
  const next = state.pos + step;
  if (next < 0 || next >= state.list.length) return;
  state.pos = next;
  show();
}

document.addEventListener("keydown", (event) => {
  const typing = ["TEXTAREA", "INPUT", "SELECT"].includes(document.activeElement.tagName);
  if (typing) {
    if (event.key === "Escape") document.activeElement.blur();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (["a", "b", "c", "x"].includes(key)) grade(key.toUpperCase());
  else if (key === "arrowright" || key === "n") move(1);
  else if (key === "arrowleft" || key === "p") move(-1);
  else if (key === "s") {
    state.stretch = state.stretch === "asinh" ? "linear" : "asinh";
    $("stretch").textContent = state.stretch;
    if (current()) setImages(current());
  } else if (key === "z") {
    state.zoom = !state.zoom;
    $("zoom").textContent = state.zoom ? "on" : "off";
    if (current()) setImages(current());
  } else if (key === "v") {
    state.view = views[(views.indexOf(state.view) + 1) % views.length];
    $("view").textContent = state.view;
    if (current()) setImages(current());
  } else return;
  event.preventDefault();
});

$("grader").value = localStorage.getItem("lensfinder-grader") || defaultGrader();
$("grader").addEventListener("change", () => {
  localStorage.setItem("lensfinder-grader", grader());
  if (state.mode === "queue") loadQueue();
  else loadList(state.list.length ? state.list[state.pos].id : null);
});
for (const id of ["smin", "smax", "show"]) $(id).addEventListener("change", () => loadList(null));
$("mode").addEventListener("change", () => setMode($("mode").value));
$("view").textContent = state.view;
if (state.mode === "queue") setMode("queue");
else {
  $("mode").value = "browse";
  $("browsing").hidden = false;
  loadList(Number(location.hash.slice(1)) || null);
  loadMe();
}
