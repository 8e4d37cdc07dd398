// One run: its jobs as they go, its total cost, the ranking of a competition, actions.

import { get } from "../api.js";
import { h, keyed, link } from "../dom.js";
import { ACTIVE, FINAL, duration, jobNumber, ticking, usd } from "../format.js";
import { now, remember, store } from "../store.js";
import { act, action, actSteps, badge, field, table } from "../ui.js";
import { jobsOf, runDuration, totalCost } from "./runs.js";

export function elapsed(job, at) {
  const r = job.result;
  if (r && FINAL.has(job.status)) return r.duration_s || 0;
  const last = (job.attempts || [])[job.attempts.length - 1];
  return last && last.started_at && job.status === "running" ? at - last.started_at : 0;
}

/** Elapsed against the timeout: counting while the job runs. */
export function timing(job, at) {
  const spent = elapsed(job, at);
  const limit = job.timeout_s || 0;
  const last = (job.attempts || [])[job.attempts.length - 1];
  const counting = job.status === "running" && last && last.started_at;
  const suffix = limit ? ` of ${duration(limit)}` : "";
  const text = counting ? ticking("span", last.started_at, { suffix }) : h("span");
  text.textContent = `${duration(spent)}${suffix}`;
  if (!limit) return [text];
  const bar = counting ? ticking("progress", last.started_at) : h("progress");
  bar.max = limit;
  bar.value = Math.min(spent, limit);
  bar.title = "elapsed against the timeout";
  return [text, bar];
}

export function spending(job) {
  const cost = Number((job.result && job.result.cost_usd) || 0);
  const budget = Number(job.budget_usd || 0);
  if (!budget) return [job.result ? usd(cost) : "-"];
  return [`${usd(cost)} of ${usd(budget)}`, h("progress", { max: budget, value: Math.min(cost, budget) })];
}

function jobActions(job) {
  if (ACTIVE.has(job.status)) {
    return action("Cancel", () => act("/api/cancel", { id: job.id }), { confirm: true, cls: "cancel" });
  }
  return action("Retry", () => act("/api/retry", { id: job.id }), { cls: "retry" });
}

function jobRow(job, run, at) {
  const r = job.result || {};
  const files = (r.files_modified || []).length;
  const note = job.status === "queued" || job.status === "waiting" ? job.wait_reason : r.error || "";
  return h(
    "tr",
    { "data-job": job.id, class: `st-${job.status}` },
    h("td", { class: "id" }, link(["jobs", job.id], job.id)),
    h("td", { class: "text" }, job.name),
    h("td", {}, job.agent || "shell"),
    h("td", {}, job.model || "-"),
    h("td", {}, job.node_name || "-"),
    h("td", {}, badge(job.status)),
    h("td", { class: "num" }, timing(job, at)),
    h("td", { class: "num" }, job.result ? String(r.steps || 0) : "-"),
    h("td", { class: "num" }, job.result ? `${r.tokens_in || 0}/${r.tokens_out || 0}` : "-"),
    h("td", { class: "num" }, spending(job)),
    h("td", { class: "num" }, run.repo_url && job.result ? `${files} (+${r.insertions || 0}/-${r.deletions || 0})` : "-"),
    h("td", {}, r.check || "-"),
    h("td", { class: "text note-cell" }, note),
    h("td", {}, jobActions(job)),
  );
}

function compareTable(rows) {
  const t = table(["#", "model", "agent", "node", "check", "status", "cost", "duration", "diff", "steps", "branch"]);
  for (const x of rows) {
    t.body.append(
      h(
        "tr",
        {},
        h("td", { class: "num" }, String(x.rank)),
        h("td", {}, x.model || "-"),
        h("td", {}, x.agent),
        h("td", {}, x.node || "-"),
        h("td", {}, x.check || "-"),
        h("td", {}, badge(x.status)),
        h("td", { class: "num" }, usd(x.cost_usd)),
        h("td", { class: "num" }, duration(x.duration_s)),
        h("td", {}, `${x.files} files, ${x.diff} lines`),
        h("td", { class: "num" }, String(x.steps)),
        h("td", { class: "id" }, x.branch ? link(["jobs", x.job], x.branch) : "-"),
      ),
    );
  }
  return t.el;
}

export function runView(root, runId) {
  const head = h("section", { class: "head" });
  const ranking = h("section", { class: "ranking" });
  const t = table(
    ["job", "task", "agent", "model", "node", "status", "elapsed", "steps", "tokens", "cost", "files", "check", "note", ""],
    "jobs",
  );
  const problem = h("p", { class: "error" });
  problem.hidden = true;
  const steps = h("ul", { class: "steps", "aria-live": "polite" }); // a cleanup's progress, as it goes
  steps.hidden = true;
  root.replaceChildren(
    h("h1", {}, "Run ", h("span", { class: "id" }, runId)),
    problem,
    head,
    steps,
    ranking,
    h("h2", {}, "Jobs"),
    t.el,
  );
  let fetched = -1;
  let compare = [];
  let finals = -1;
  let timer = null;

  async function load() {
    fetched = store.generation;
    try {
      const reply = await get(`/api/runs/${encodeURIComponent(runId)}`);
      compare = reply.compare;
      remember(reply.run, reply.run.jobs);
      problem.hidden = true;
    } catch (err) {
      problem.textContent = err.message;
      problem.hidden = false;
    }
  }

  function facts(run, jobs, at) {
    return h(
      "dl",
      {},
      field("name", run.name || "-"),
      field("status", badge(run.status)),
      field("jobs", String(jobs.length)),
      field("total cost", h("span", { class: "total-cost" }, usd(totalCost(jobs)))),
      field("created", new Date(run.created_at * 1000).toLocaleString()),
      field("duration", runDuration(run, at)),
      field("repository", run.repo_url || "-"),
      field("base", run.base_commit ? run.base_commit.slice(0, 12) : "-"),
    );
  }

  function actions(active, failed) {
    return h(
      "div",
      { class: "actions" },
      active ? action("Cancel run", () => act("/api/cancel", { id: runId }), { confirm: true, cls: "cancel-run" }) : null,
      !active && failed
        ? action("Retry failed", () => act("/api/retry", { id: runId, failed: true }), { cls: "retry-run" })
        : null,
      !active
        ? action("Clean up", () => actSteps("/api/cleanup", { run: runId }, steps), { confirm: true, cls: "cleanup" })
        : null,
    );
  }

  function renderHead(run, jobs, at) {
    const active = jobs.some((j) => ACTIVE.has(j.status));
    const failed = jobs.some((j) => FINAL.has(j.status) && j.status !== "success");
    const cost = totalCost(jobs);
    keyed(
      head,
      ["facts", "actions"],
      (k) => k,
      (k) => (k === "facts" ? `${JSON.stringify(run)}|${jobs.length}|${cost}` : `${active}|${failed}`),
      (k) => (k === "facts" ? facts(run, jobs, at) : actions(active, failed)),
    );
  }

  load();
  return {
    update() {
      if (fetched !== store.generation) load();
      const run = store.runs.get(runId);
      if (!run) return;
      const at = now();
      const jobs = jobsOf(runId).sort((a, b) => jobNumber(a.id) - jobNumber(b.id));
      const done = jobs.filter((j) => FINAL.has(j.status)).length;
      if (compare.length && done !== finals) {
        clearTimeout(timer); // a job ended: the ranking may have changed
        timer = setTimeout(load, 300);
      }
      finals = done;
      renderHead(run, jobs, at);
      keyed(
        ranking,
        compare.length ? ["ranking"] : [],
        (k) => k,
        () => JSON.stringify(compare),
        () => h("div", {}, h("h2", {}, "Ranking (flota compare)"), compareTable(compare)),
      );
      keyed(
        t.body,
        jobs,
        (j) => j.id,
        (j) => JSON.stringify(j),
        (j) => jobRow(j, run, at),
      );
    },
    unmount() {
      clearTimeout(timer);
    },
  };
}
