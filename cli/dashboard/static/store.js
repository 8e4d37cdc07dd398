// The fleet as the dashboard's event stream describes it (docs/cli.md, "Events"), kept in
// the page: nodes, runs, jobs, and each node's recent utilisation for its chart.

const HISTORY = 180; // samples per node (15 minutes at one per 5 s)

export const store = {
  nodes: new Map(),
  runs: new Map(),
  jobs: new Map(),
  history: new Map(), // node id -> [{t, cpu, mem}]
  upstream: { ok: false, error: "connecting" },
  link: "connecting", // connecting | live | reconnecting | stopped
  generation: 0, // grows with every snapshot: fetched data is then fetched again
  skew: 0, // the dashboard's clock minus this browser's, in seconds
};

const listeners = new Set();
let staging = null;
let scheduled = false;

export function onChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function changed() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    for (const fn of listeners) fn();
  });
}

export function now() {
  return Date.now() / 1000 + store.skew;
}

function sample(node, at) {
  const f = node.info.facts || {};
  const total = Number(f.memory_total_mb || 0);
  if (!f.cpu_count) return;
  const cpu = Math.min(100, (100 * Number(f.load_1m || 0)) / f.cpu_count);
  const mem = total ? (100 * (total - Number(f.memory_available_mb || 0))) / total : 0;
  const list = store.history.get(node.info.id) || [];
  if (list.length && at - list[list.length - 1].t < 1) list.pop();
  list.push({ t: at, cpu, mem });
  if (list.length > HISTORY) list.splice(0, list.length - HISTORY);
  store.history.set(node.info.id, list);
}

function apply(target, m) {
  if (m.node) {
    if (m.type === "node.removed") target.nodes.delete(m.node.info.id);
    else target.nodes.set(m.node.info.id, m.node);
    if (m.type !== "node.removed") sample(m.node, m.at || now());
  } else if (m.run) {
    target.runs.set(m.run.id, m.run);
  } else if (m.job) {
    target.jobs.set(m.job.id, m.job);
  }
}

function handle(m) {
  switch (m.type) {
    case "resync":
      staging = { nodes: new Map(), runs: new Map(), jobs: new Map() };
      return;
    case "live":
      if (staging) {
        Object.assign(store, staging);
        staging = null;
        store.generation += 1;
      }
      break;
    case "upstream":
      store.upstream = m;
      break;
    case "clock":
      store.skew = m.at - Date.now() / 1000;
      break;
    default:
      apply(staging || store, m);
  }
  changed();
}

/** A run or job fetched by a view: kept until the stream says otherwise. */
export function remember(run, jobs) {
  if (run) store.runs.set(run.id, { ...run, jobs: [] });
  for (const job of jobs || []) store.jobs.set(job.id, job);
  changed();
}

export function connect() {
  const source = new EventSource("/api/events");
  source.onopen = () => {
    store.link = "live";
    changed();
  };
  source.onmessage = (e) => {
    let m;
    try {
      m = JSON.parse(e.data);
    } catch {
      return;
    }
    handle(m);
  };
  source.onerror = () => {
    // Closed: the dashboard refused the page (it was restarted with a new token, or stopped).
    store.link = source.readyState === EventSource.CLOSED ? "stopped" : "reconnecting";
    changed();
  };
}
