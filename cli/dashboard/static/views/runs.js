// Every run the stream has told of, newest first: status, jobs, cost.

import { h, keyed, link } from "../dom.js";
import { duration, ticking, usd } from "../format.js";
import { now, store } from "../store.js";
import { badge, table } from "../ui.js";

export function jobsOf(runId) {
  return [...store.jobs.values()].filter((j) => j.run_id === runId);
}

export function totalCost(jobs) {
  return jobs.reduce((sum, j) => sum + Number((j.result && j.result.cost_usd) || 0), 0);
}

function counts(jobs) {
  const by = new Map();
  for (const j of jobs) by.set(j.status, (by.get(j.status) || 0) + 1);
  return [...by.entries()].map(([status, n]) => badge(status, `${n} ${status}`));
}

export function runDuration(run, at) {
  if (run.finished_at) return duration(run.finished_at - run.created_at);
  const el = ticking("span", run.created_at);
  el.textContent = duration(at - run.created_at);
  return el;
}

function row(run, jobs, at) {
  return h(
    "tr",
    { "data-run": run.id },
    h("td", { class: "id" }, link(["runs", run.id], run.id)),
    h("td", { class: "text" }, run.name || "-"),
    h("td", {}, badge(run.status)),
    h("td", { class: "jobs" }, jobs.length ? counts(jobs) : "-"),
    h("td", { class: "num" }, jobs.length ? usd(totalCost(jobs)) : "-"),
    h("td", {}, new Date(run.created_at * 1000).toLocaleString()),
    h("td", { class: "num" }, runDuration(run, at)),
  );
}

export function runsView(root) {
  const t = table(["run", "name", "status", "jobs", "cost", "created", "duration"], "runs");
  const empty = h("p", { class: "empty" }, 'No runs yet: flota run "echo hello".');
  root.replaceChildren(h("h1", {}, "Runs"), empty, t.el);
  return {
    update() {
      const at = now();
      const runs = [...store.runs.values()].sort((a, b) => b.created_at - a.created_at);
      const jobs = new Map();
      for (const j of store.jobs.values()) {
        if (!jobs.has(j.run_id)) jobs.set(j.run_id, []);
        jobs.get(j.run_id).push(j);
      }
      empty.hidden = runs.length > 0;
      t.el.hidden = runs.length === 0;
      keyed(
        t.body,
        runs,
        (r) => r.id,
        (r) => {
          const mine = jobs.get(r.id) || [];
          return `${JSON.stringify(r)}|${mine.map((j) => j.status + (j.result ? j.result.cost_usd : "")).join()}`;
        },
        (r) => row(r, jobs.get(r.id) || [], at),
      );
    },
  };
}
