// The dashboard's page: a header, the view the address names, kept up to date from one
// event stream. Views: #/ (fleet), #/runs, #/runs/RUN, #/jobs/JOB.

import { h } from "./dom.js";
import { tick } from "./format.js";
import { connect, now, onChange, store } from "./store.js";
import { fleetView } from "./views/fleet.js";
import { jobView } from "./views/job.js";
import { runView } from "./views/run.js";
import { runsView } from "./views/runs.js";

let current = null;

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const root = document.getElementById("view");
  if (current && current.unmount) current.unmount();
  let nav = "fleet";
  if (parts[0] === "runs" && parts[1]) {
    current = runView(root, parts[1]);
    nav = "runs";
  } else if (parts[0] === "runs") {
    current = runsView(root);
    nav = "runs";
  } else if (parts[0] === "jobs" && parts[1]) {
    current = jobView(root, parts[1]);
    nav = "runs";
  } else {
    current = fleetView(root);
  }
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("here", a.dataset.nav === nav);
  current.update();
  tick(now());
}

function header() {
  const link = document.getElementById("link");
  const up = store.upstream;
  let text = "live";
  let cls = "pill ok";
  if (store.link === "stopped") {
    text = "the dashboard stopped or restarted: open the URL it printed";
    cls = "pill bad";
  } else if (store.link !== "live") {
    text = "reconnecting to the dashboard…";
    cls = "pill warn";
  } else if (!up.ok) {
    text = `coordinator: ${up.error}`;
    cls = "pill bad";
  }
  link.textContent = text;
  link.className = cls;
  const nodes = [...store.nodes.values()];
  const online = nodes.filter((n) => n.state === "online").length;
  const running = [...store.jobs.values()].filter((j) => j.status === "running").length;
  document.getElementById("summary").replaceChildren(h("span", {}, `${online}/${nodes.length} nodes online · ${running} jobs running`));
}

onChange(() => {
  header();
  if (current) current.update();
  tick(now());
});
window.addEventListener("hashchange", route);
setInterval(() => tick(now()), 1000);
route();
header();
connect();
