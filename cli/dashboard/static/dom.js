// Building the page from data. Every text goes in as a text node (never as HTML):
// task names, logs and errors are whatever a job or a user wrote.

const SVG = "http://www.w3.org/2000/svg";

function fill(el, props, children) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** An HTML element: h("td", {class: "num"}, "3 s"). */
export function h(tag, props, ...children) {
  return fill(document.createElement(tag), props, children);
}

/** An SVG element. */
export function s(tag, props, ...children) {
  return fill(document.createElementNS(SVG, tag), props, children);
}

/** A link inside the page: its target is built from ids, each encoded. */
export function link(parts, ...children) {
  return h("a", { href: "#/" + parts.map(encodeURIComponent).join("/") }, ...children);
}

/**
 * Rows kept by key: a row whose signature has not changed is left as it is (so a button
 * under the pointer stays there while other rows change).
 */
export function keyed(parent, items, key, signature, build) {
  const old = new Map();
  for (const el of parent.children) old.set(el.dataset.key, el);
  const rows = items.map((item) => {
    const k = key(item);
    const sig = signature(item);
    const before = old.get(k);
    if (before && before.dataset.sig === sig) return before;
    const el = build(item);
    el.dataset.key = k;
    el.dataset.sig = sig;
    return el;
  });
  const same = rows.length === parent.children.length && rows.every((el, i) => parent.children[i] === el);
  if (!same) parent.replaceChildren(...rows);
}
