// lensfinder inspect: the grading page's script, served as a file (the Content-Security-Policy
// allows no inline script). Every value from the server is written as text with textContent,
// never parsed as markup: a catalogue cell or a grader name is data.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { list: [], pos: 0, stretch: "asinh", zoom: false };
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
  const params = query({ stretch: state.stretch, zoom: state.zoom });
  for (const band of ["colour", "VIS", "Y", "J", "H"]) {
    $(band).src = `api/image/${id}/${band}.png?${params}`;
  }
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

async function grade(letter) {
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
    setImages(state.list[state.pos].id);
  } else if (key === "z") {
    state.zoom = !state.zoom;
    $("zoom").textContent = state.zoom ? "on" : "off";
    setImages(state.list[state.pos].id);
  } else return;
  event.preventDefault();
});

$("grader").value = localStorage.getItem("lensfinder-grader") || defaultGrader();
$("grader").addEventListener("change", () => {
  localStorage.setItem("lensfinder-grader", grader());
  loadList(state.list.length ? state.list[state.pos].id : null);
});
for (const id of ["smin", "smax", "show"]) $(id).addEventListener("change", () => loadList(null));
loadList(Number(location.hash.slice(1)) || null);
