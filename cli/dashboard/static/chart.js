// A node's utilisation over time: CPU (load per core) and memory in use, in percent,
// from the samples the page has kept (store.history).

import { s } from "./dom.js";

const W = 180;
const H = 40;
const SPAN = 900; // seconds shown

function line(points, t0, key, cls) {
  const xy = points.map((p) => {
    const x = ((p.t - t0) / SPAN) * W;
    const y = H - (Math.max(0, Math.min(100, p[key])) / 100) * (H - 2) - 1;
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  return s("polyline", { points: xy.join(" "), class: cls });
}

export function chart(points, now) {
  const t0 = now - SPAN;
  const shown = points.filter((p) => p.t >= t0);
  const last = shown[shown.length - 1];
  const title = last ? `CPU ${last.cpu.toFixed(0)}%, memory ${last.mem.toFixed(0)}% (last 15 min)` : "no samples yet";
  return s(
    "svg",
    { class: "chart", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": title },
    s("title", {}, title),
    s("rect", { x: 0, y: 0, width: W, height: H, class: "frame" }),
    shown.length ? line(shown, t0, "mem", "mem") : null,
    shown.length ? line(shown, t0, "cpu", "cpu") : null,
  );
}
