// One job: what it is, its attempts, its log as it comes, and its change as a diff.

import { get } from "../api.js";
import { h, keyed, link } from "../dom.js";
import { ACTIVE, FINAL, clock } from "../format.js";
import { remember, store, now } from "../store.js";
import { act, action, badge, field, table } from "../ui.js";
import { spending, timing } from "./run.js";

const MAX_LOG_LINES = 20000; // the page keeps the last ones; `flota logs JOB` has them all
const MAX_DIFF_LINES = 20000;

function facts(job, repoUrl, at) {
  const r = job.result || {};
  return h(
    "dl",
    {},
    field("run", link(["runs", job.run_id], job.run_id)),
    field("task", h("span", { class: "task" }, job.name)),
    field("status", badge(job.status)),
    field("agent", job.agent || "shell", job.model ? ` · ${job.model}` : ""),
    field("node", job.node_name || "-"),
    field("elapsed", timing(job, at)),
    field("cost", spending(job)),
    field("steps", job.result ? String(r.steps || 0) + (job.max_steps ? ` of ${job.max_steps}` : "") : "-"),
    field("tokens", job.result ? `${r.tokens_in || 0} in, ${r.tokens_out || 0} out` : "-"),
    field("branch", job.branch || r.branch || "-"),
    field("check", r.check || (job.check ? "pending" : "-")),
    (job.status === "queued" || job.status === "waiting") && job.wait_reason ? field("waiting", job.wait_reason) : null,
    job.result ? field("exit code", String(r.exit_code ?? 0)) : null,
    r.error ? field("error", h("span", { class: "error" }, r.error)) : null,
    r.answer ? field("answer", h("span", { class: "answer" }, r.answer)) : null,
    repoUrl ? field("repository", repoUrl) : null,
  );
}

function attemptsTable(job) {
  const t = table(["#", "node", "status", "branch", "created", "started", "finished", "error"], "attempts");
  for (const a of job.attempts || []) {
    t.body.append(
      h(
        "tr",
        {},
        h("td", { class: "num" }, String(a.number)),
        h("td", {}, a.node_name || a.node_id || "-"),
        h("td", {}, badge(a.status)),
        h("td", { class: "id" }, a.branch || "-"),
        h("td", {}, clock(a.created_at)),
        h("td", {}, clock(a.started_at)),
        h("td", {}, clock(a.finished_at)),
        h("td", { class: "text error" }, a.error || ""),
      ),
    );
  }
  return t.el;
}

function diffLine(line) {
  let cls = "ctx";
  if (line.startsWith("diff --git") || line.startsWith("index ")) cls = "meta";
  else if (line.startsWith("+++") || line.startsWith("---")) cls = "meta";
  else if (line.startsWith("@@")) cls = "hunk";
  else if (line.startsWith("+")) cls = "add";
  else if (line.startsWith("-")) cls = "del";
  return h("span", { class: cls }, line + "\n");
}

function diffView(d) {
  const files = table(["file", "change", "lines"], "files");
  for (const f of d.files) {
    const lines = f.insertions === null ? "binary" : `+${f.insertions} −${f.deletions}`;
    files.body.append(
      h("tr", {}, h("td", { class: "path" }, f.old_path ? `${f.old_path} → ${f.path}` : f.path), h("td", {}, f.status), h("td", { class: "num" }, lines)),
    );
  }
  const lines = d.diff.split("\n");
  if (lines.length && lines[lines.length - 1] === "") lines.pop();
  const shown = lines.slice(0, MAX_DIFF_LINES);
  const cut = d.truncated || lines.length > shown.length;
  return [
    h("p", {}, `${d.files.length} files changed, `, h("span", { class: "id" }, d.base_commit.slice(0, 12)), " → ", h("span", { class: "id" }, d.head_commit.slice(0, 12)), ` on ${d.branch}`),
    files.el,
    h("pre", { class: "diff" }, shown.map(diffLine)),
    cut ? h("p", { class: "empty" }, `The diff is cut here: flota diff ${d.job} has it all.`) : null,
  ].filter(Boolean);
}

export function jobView(root, jobId) {
  const head = h("section", { class: "head" });
  const attempts = h("section", { class: "attempts" });
  const logBox = h("pre", { class: "log", "aria-label": "log" });
  const logState = h("span", { class: "log-state" }, "connecting…");
  const diffBox = h("section", { class: "diff-box" }, h("p", { class: "empty" }, "The diff appears when the job has ended."));
  const problem = h("p", { class: "error" });
  problem.hidden = true;
  root.replaceChildren(
    h("h1", {}, "Job ", h("span", { class: "id" }, jobId)),
    problem,
    head,
    h("h2", {}, "Attempts"),
    attempts,
    h("h2", {}, "Log ", logState),
    logBox,
    h("h2", {}, "Diff"),
    diffBox,
  );
  let repoUrl = "";
  let loaded = false;
  let fetched = -1;
  let diffFor = null;
  let logLines = 0;
  let attemptShown = null;

  async function load() {
    fetched = store.generation;
    try {
      const reply = await get(`/api/jobs/${encodeURIComponent(jobId)}`);
      repoUrl = reply.repo_url;
      loaded = true;
      remember(null, [reply.job]);
      problem.hidden = true;
    } catch (err) {
      problem.textContent = err.message;
      problem.hidden = false;
    }
  }

  async function loadDiff(job) {
    const r = job.result || {};
    diffFor = `${job.status}|${r.head_commit || ""}`;
    if (!repoUrl) {
      diffBox.replaceChildren(h("p", { class: "empty" }, "This job ran without a repository (flota run --repo): it has no diff."));
      return;
    }
    diffBox.replaceChildren(h("p", { class: "empty" }, "Fetching the job's branch…"));
    try {
      diffBox.replaceChildren(...diffView(await get(`/api/jobs/${encodeURIComponent(jobId)}/diff`)));
    } catch (err) {
      diffBox.replaceChildren(h("p", { class: "error" }, err.message));
    }
  }

  let logs = null;
  let logsOpen = false;

  function onLog(e) {
    const m = JSON.parse(e.data);
    if (m.type === "lines") {
      if (m.attempt_id !== attemptShown) {
        attemptShown = m.attempt_id;
        logBox.append(h("span", { class: "attempt" }, `── attempt ${m.attempt_id} ──\n`));
      }
      logBox.append(m.lines.map((l) => l + "\n").join(""));
      logLines += m.lines.length;
      while (logLines > MAX_LOG_LINES && logBox.firstChild) {
        logLines -= (logBox.firstChild.textContent.match(/\n/g) || []).length;
        logBox.firstChild.remove();
      }
      logState.textContent = `${logLines} lines`;
      logBox.scrollTop = logBox.scrollHeight;
    } else if (m.type === "end") {
      closeLogs();
      logState.textContent = `${logLines} lines, ended`;
    } else if (m.type === "error") {
      closeLogs();
      logState.textContent = m.error;
      logState.classList.add("error");
    }
  }

  function openLogs() {
    logBox.replaceChildren();
    logLines = 0;
    attemptShown = null;
    logState.classList.remove("error");
    logState.textContent = "connecting…";
    logs = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/logs`);
    logsOpen = true;
    logs.onmessage = onLog;
    logs.onerror = () => {
      if (logs && logs.readyState === EventSource.CLOSED) logState.textContent = "the dashboard stopped";
    };
  }

  function closeLogs() {
    if (logs) logs.close();
    logsOpen = false;
  }

  openLogs();
  load();
  return {
    update() {
      if (fetched !== store.generation) load();
      const job = store.jobs.get(jobId);
      if (!job) return;
      const at = now();
      keyed(
        head,
        ["facts", "actions"],
        (k) => k,
        (k) => (k === "facts" ? `${JSON.stringify(job)}|${repoUrl}` : job.status),
        (k) =>
          k === "facts"
            ? facts(job, repoUrl, at)
            : h(
                "div",
                { class: "actions" },
                ACTIVE.has(job.status)
                  ? action("Cancel", () => act("/api/cancel", { id: jobId }), { confirm: true, cls: "cancel" })
                  : action("Retry", () => act("/api/retry", { id: jobId }), { cls: "retry" }),
              ),
      );
      keyed(attempts, ["attempts"], (k) => k, () => JSON.stringify(job.attempts), () => attemptsTable(job));
      if (ACTIVE.has(job.status) && !logsOpen) openLogs(); // retried: its new attempt's log
      const r = job.result || {};
      if (FINAL.has(job.status) && diffFor !== `${job.status}|${r.head_commit || ""}` && loaded) {
        loadDiff(job);
      }
    },
    unmount() {
      closeLogs();
    },
  };
}
