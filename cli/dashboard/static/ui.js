// Pieces every view uses: status badges, buttons that act, notes that say how it went.

import { post } from "./api.js";
import { h } from "./dom.js";

export function badge(status, text) {
  return h("span", { class: `badge st-${String(status).replace(/[^a-z]/g, "")}` }, text || status);
}

/** A note at the top of the page: the action's result, or its error. */
export function note(message, ok) {
  const box = document.getElementById("notes");
  const el = h("div", { class: ok ? "note ok" : "note error" }, message, " ");
  el.append(h("button", { class: "close", "aria-label": "dismiss", onclick: () => el.remove() }, "×"));
  box.prepend(el);
  while (box.children.length > 5) box.lastChild.remove();
  if (ok) setTimeout(() => el.remove(), 8000);
}

/** POST an action; its message (or error) becomes a note. */
export async function act(path, body) {
  try {
    const reply = await post(path, body);
    note(reply.message, true);
    return reply;
  } catch (err) {
    note(err.message, false);
    return null;
  }
}

/**
 * A button for an action. With `confirm`, the first click asks ("cancel? click again")
 * and only a second click within 4 s acts.
 */
export function action(label, run, { confirm = false, cls = "" } = {}) {
  const el = h("button", { class: `act ${cls}`.trim(), type: "button" }, label);
  let armed = null;
  el.addEventListener("click", async () => {
    if (confirm && !armed) {
      el.textContent = `${label}? click again`;
      el.classList.add("armed");
      armed = setTimeout(() => {
        armed = null;
        el.textContent = label;
        el.classList.remove("armed");
      }, 4000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    el.disabled = true;
    el.textContent = `${label}…`;
    try {
      await run();
    } finally {
      el.disabled = false;
      el.textContent = label;
      el.classList.remove("armed");
    }
  });
  return el;
}

export function table(headers, cls) {
  const body = h("tbody");
  const el = h("table", { class: cls || "" }, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))), body);
  return { el, body };
}

export function field(label, ...value) {
  return [h("dt", {}, label), h("dd", {}, ...value)];
}
