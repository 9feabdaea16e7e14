// lensfinder inspect: the team lead's page (served as a file: the CSP allows no inline script).
// Every value is written as text with textContent, never parsed as markup.
"use strict";
const $ = (id) => document.getElementById(id);

function fmt(value) {
  if (value === null || value === undefined) return "-";
  if (typeof value === "number" && !Number.isInteger(value)) return value.toPrecision(3);
  return String(value);
}

function table(id, columns, rows) {
  const head = document.createElement("tr");
  for (const [, title] of columns) {
    const cell = document.createElement("th");
    cell.textContent = title;
    head.append(cell);
  }
  const body = rows.map((row) => {
    const line = document.createElement("tr");
    for (const [key] of columns) {
      const cell = document.createElement("td");
      cell.textContent = typeof key === "function" ? key(row) : fmt(row[key]);
      line.append(cell);
    }
    return line;
  });
  $(id).replaceChildren(head, ...body);
}

const pm = (mean, sigma) => (row) => `${fmt(row[mean])} ± ${fmt(row[sigma])}`;

async function load() {
  const response = await fetch("api/team");
  const team = await response.json();
  if (!response.ok) { $("status").textContent = team.detail || response.statusText; return; }
  $("summary").textContent = `${team.graders.length} graders · Fleiss' kappa ${fmt(team.kappa)}` +
    ` · ${team.sentinels} sentinels at rate ${fmt(team.sentinel_rate)}`;
  table("graders", [
    ["grader", "grader"], ["candidates", "candidates graded"],
    [pm("p_lens", "p_lens_sigma"), "P(lens | lens)"], [pm("p_not", "p_not_sigma"), "P(not | not)"],
    ["lenses_caught", "lens sentinels caught"], ["lenses_missed", "missed"],
    ["nonlenses_rejected", "non-lens sentinels rejected"], ["false_alarms", "false alarms"],
    ["agrees_with_consensus", "agreement"],
  ], team.graders);
  table("candidates", [
    ["rank", "rank"], ["id", "ID"], ["score", "score"], ["prior", "prior"],
    ["posterior", "posterior"], ["mean_grade", "mean grade"], ["class", "class"],
    ["graders", "graders"], ["agreement", "agreement"], ["retired", "retired"],
  ], team.candidates);
}

load();
