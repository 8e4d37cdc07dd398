// Every node: what it is, how it is, what it runs; a chart of the last 15 minutes.

import { chart } from "../chart.js";
import { h, keyed } from "../dom.js";
import { mib, ticking, whole } from "../format.js";
import { now, store } from "../store.js";
import { act, action, badge } from "../ui.js";

/** "online", "draining", or "unreachable for 12 s" (counting). */
export function stateText(node, at) {
  const silent = ["unreachable", "lost", "offline"].includes(node.state) && node.last_seen;
  if (!silent) return node.state;
  const el = ticking("span", node.last_seen, { fmt: "whole", prefix: `${node.state} for ` });
  el.textContent = `${node.state} for ${whole(at - node.last_seen)}`;
  return el;
}

function battery(f) {
  if (f.battery_percent === undefined || f.battery_percent < 0) return "AC (no battery)";
  return `${f.on_battery ? "on battery" : "AC"}, ${f.battery_percent}%`;
}

function card(node, at) {
  const i = node.info;
  const f = i.facts || {};
  const name = i.name || i.id;
  const draining = node.state === "draining";
  const drain = action(draining ? "Undrain" : "Drain", () => act("/api/drain", { node: i.id, undo: draining }), {
    cls: draining ? "undrain" : "drain",
  });
  const gpus = (f.gpus || []).map((g) => `${g.name}${g.memory_mb ? ` (${mib(g.memory_mb)})` : ""}`);
  const models = (f.local_models || []).map((m) => m.model);
  const labels = Object.entries(i.labels || {}).map(([k, v]) => `${k}=${v}`);
  const memUsed = Number(f.memory_total_mb || 0) - Number(f.memory_available_mb || 0);
  return h(
    "article",
    { class: `node st-${node.state}`, "data-node": name },
    h("header", {}, h("h2", {}, name), badge(node.state, stateText(node, at)), drain),
    h(
      "dl",
      {},
      h("dt", {}, "network"),
      h("dd", {}, i.network || "-", i.network_source ? ` (${i.network_source})` : ""),
      h("dt", {}, "CPU"),
      h("dd", {}, f.cpu_count ? `${f.cpu_count} cores, load ${Number(f.load_1m || 0).toFixed(2)}` : "-"),
      h("dt", {}, "memory"),
      h("dd", {}, f.memory_total_mb ? `${mib(memUsed)} used of ${mib(f.memory_total_mb)}` : "-"),
      h("dt", {}, "GPU"),
      h("dd", {}, gpus.join(", ") || "-"),
      h("dt", {}, "power"),
      h("dd", {}, battery(f)),
      h("dt", {}, "slots"),
      h("dd", { class: "slots" }, `${i.running || 0}/${i.slots || 0} used`),
      h("dt", {}, "agents"),
      h("dd", {}, (f.agent_clis || []).join(", ") || "-"),
      h("dt", {}, "models"),
      h("dd", {}, models.join(", ") || "-"),
      labels.length ? [h("dt", {}, "labels"), h("dd", {}, labels.join(", "))] : null,
      h("dt", {}, "version"),
      h("dd", {}, i.version || "-"),
      node.error ? [h("dt", {}, "error"), h("dd", { class: "error" }, node.error)] : null,
    ),
    h(
      "figure",
      {},
      chart(store.history.get(i.id) || [], at),
      h("figcaption", {}, h("span", { class: "key cpu" }, "CPU"), " ", h("span", { class: "key mem" }, "memory")),
    ),
  );
}

export function fleetView(root) {
  const grid = h("div", { class: "grid" });
  const empty = h("p", { class: "empty" }, "No nodes yet: start one with flota node start, or flota up --local 2.");
  root.replaceChildren(h("h1", {}, "Fleet"), empty, grid);
  return {
    update() {
      const at = now();
      const nodes = [...store.nodes.values()].sort((a, b) => (a.info.name || "").localeCompare(b.info.name || ""));
      empty.hidden = nodes.length > 0;
      keyed(
        grid,
        nodes,
        (n) => n.info.id,
        (n) => `${JSON.stringify(n)}|${(store.history.get(n.info.id) || []).length}|${Math.floor(at / 30)}`,
        (n) => card(n, at),
      );
    },
  };
}
