// Calls to the dashboard's own API. Actions are POSTs with the page's CSRF token.

let csrf = null;

async function session() {
  if (csrf === null) {
    const reply = await fetch("/api/session", { credentials: "same-origin" });
    if (!reply.ok) throw new Error(await errorOf(reply));
    csrf = (await reply.json()).csrf;
  }
  return csrf;
}

async function errorOf(reply) {
  try {
    return (await reply.json()).error || `${reply.status} ${reply.statusText}`;
  } catch {
    return `${reply.status} ${reply.statusText}`;
  }
}

export async function get(path) {
  const reply = await fetch(path, { credentials: "same-origin" });
  if (!reply.ok) throw new Error(await errorOf(reply));
  return reply.json();
}

export async function post(path, body) {
  const token = await session();
  const reply = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Flota-CSRF": token },
    body: JSON.stringify(body),
  });
  if (!reply.ok) throw new Error(await errorOf(reply));
  return reply.json();
}

/** POST an action that answers as it goes (NDJSON): `onLine` gets each line's object. */
export async function postLines(path, body, onLine) {
  const token = await session();
  const reply = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Flota-CSRF": token },
    body: JSON.stringify(body),
  });
  if (!reply.ok) throw new Error(await errorOf(reply));
  const reader = reply.body.getReader();
  const decoder = new TextDecoder();
  let rest = "";
  for (;;) {
    const { value, done } = await reader.read();
    rest += decoder.decode(value || new Uint8Array(), { stream: !done });
    const lines = rest.split("\n");
    rest = lines.pop();
    for (const line of lines) if (line.trim()) onLine(JSON.parse(line));
    if (done) break;
  }
}
