// Pieces every view uses: status badges, buttons that act, notes that say how it went.

import { post, postLines } from "./api.js";
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
 * An action that reports its steps as it goes (a cleanup): each step's "what: done/total"
 * is a line of `box`, updated in place, kept once done; the result becomes a note too.
 */
export async function actSteps(path, body, box) {
  const lines = new Map();
  box.replaceChildren();
  box.hidden = false;
  const say = (key, text, cls) => {
    let el = lines.get(key);
    if (!el) {
      el = h("li");
      lines.set(key, el);
      box.append(el);
    }
    el.className = cls;
    el.textContent = text;
  };
  try {
    await postLines(path, body, (line) => {
      if (line.type === "progress") {
        say(line.what, `${line.what}: ${line.done}/${line.total}`, line.done >= line.total ? "step done" : "step");
      } else if (line.type === "done") {
        say("", line.message, "result ok");
        note(line.message, true);
      } else {
        say("", line.error, "result error");
        note(line.error, false);
      }
    });
  } catch (err) {
    say("", err.message, "result error");
    note(err.message, false);
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
