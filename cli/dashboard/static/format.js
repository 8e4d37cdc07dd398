// Numbers and times as the CLI shows them (cli/render.py).

export function duration(seconds) {
  if (!(seconds > 0)) return "-";
  if (seconds < 1) return `${Math.round(seconds * 1000)}ms`;
  if (seconds < 120) return `${seconds.toFixed(1)}s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)}m`;
  return `${(seconds / 3600).toFixed(1)}h`;
}

export function whole(seconds) {
  return `${Math.max(0, Math.floor(seconds))} s`;
}

export function usd(value) {
  return `$${Number(value || 0).toFixed(4)}`;
}

export function mib(value) {
  const mb = Number(value || 0);
  if (!mb) return "-";
  return mb >= 1024 ? `${(mb / 1024).toFixed(1)}G` : `${mb}M`;
}

export function clock(ts) {
  if (!ts) return "-";
  return new Date(ts * 1000).toLocaleTimeString();
}

export function jobNumber(id) {
  const n = Number(String(id).split(".").pop());
  return Number.isFinite(n) ? n : 0;
}

export const FINAL = new Set(["success", "failed", "timeout", "cancelled", "lost", "partial"]);
export const ACTIVE = new Set(["waiting", "queued", "dispatching", "running"]);

/**
 * A time that grows: "12 s", or "3.2s of 5.0m". The page's ticker (app.js) rewrites every
 * element with data-since each second, so a row need not be rebuilt to show it.
 */
export function ticking(tag, since, { fmt = "duration", prefix = "", suffix = "" } = {}) {
  const el = document.createElement(tag);
  el.dataset.since = String(since);
  el.dataset.fmt = fmt;
  el.dataset.prefix = prefix;
  el.dataset.suffix = suffix;
  return el;
}

export function tick(at) {
  for (const el of document.querySelectorAll("[data-since]")) {
    const spent = at - Number(el.dataset.since);
    if (el.tagName === "PROGRESS") {
      el.value = Math.min(spent, Number(el.max));
      continue;
    }
    const shown = el.dataset.fmt === "whole" ? whole(spent) : duration(spent);
    el.textContent = `${el.dataset.prefix}${shown}${el.dataset.suffix}`;
  }
}
