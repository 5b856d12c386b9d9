// chatcore web UI: plain modern JavaScript, no build step, nothing loaded from the internet.
// Every piece of user content goes into the page with textContent, never as HTML.
"use strict";

const API = "/api/v1";
const PAGE_SIZE = 15;
const $ = (id) => document.getElementById(id);

const state = {
  me: localStorage.getItem("chatcore.username"),
  partner: null,       // username of the open conversation
  oldestShown: null,   // id of the oldest message drawn, for "load older"
  shownIds: new Set(), // ids drawn in the open conversation (no duplicates)
  lastEventId: null,   // highest message id this page has heard of, for ?since= on reconnect
  unread: new Map(),   // username -> count
  socket: null,
  reconnectDelay: 500,
  users: [],
};

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const init = { credentials: "same-origin", headers: {}, ...options };
  if (options.json !== undefined) {
    init.method = init.method || "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.json);
  }
  const response = await fetch(API + path, init);
  if (response.status === 204) return null;
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    if (response.status === 401 && !path.startsWith("/auth/")) showAuth();
    throw new ApiError(response.status, (body && body.error) || `request failed (${response.status})`);
  }
  return body;
}

// ---- authentication ----

function showAuth(message = "") {
  closeSocket();
  $("app").hidden = true;
  $("auth").hidden = false;
  $("auth-error").textContent = message;
}

$("auth-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const action = event.submitter ? event.submitter.dataset.action : "login";
  const username = $("auth-username").value.trim();
  const password = $("auth-password").value;
  $("auth-error").textContent = "";
  try {
    if (action === "register") await api("/auth/register", { json: { username, password } });
    const session = await api("/auth/login", { json: { username, password } });
    state.me = session.username;
    localStorage.setItem("chatcore.username", state.me);
    $("auth-password").value = "";
    await start();
  } catch (error) {
    $("auth-error").textContent = error.message;
  }
});

$("logout-button").addEventListener("click", async () => {
  try { await api("/auth/logout", { method: "POST" }); } catch (_) { /* already logged out */ }
  localStorage.removeItem("chatcore.username");
  state.me = null;
  state.partner = null;
  showAuth();
});

// ---- people ----

async function loadUsers() {
  const q = $("user-search").value.trim();
  const query = q ? `?q=${encodeURIComponent(q)}` : "";
  state.users = await api(`/user/${query}`);
  drawUsers();
}

function drawUsers() {
  const list = $("user-list");
  list.replaceChildren();
  for (const user of state.users) {
    const item = document.createElement("li");
    item.textContent = user.username;
    item.dataset.username = user.username;
    if (user.username === state.partner) item.classList.add("active");
    const unread = state.unread.get(user.username);
    if (unread) {
      const badge = document.createElement("span");
      badge.className = "unread";
      badge.textContent = String(unread);
      item.append(badge);
    }
    item.addEventListener("click", () => openConversation(user.username));
    list.append(item);
  }
}

let searchTimer = null;
$("user-search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => loadUsers().catch(() => {}), 150);
});

// ---- conversation ----

async function openConversation(username) {
  state.partner = username;
  state.unread.delete(username);
  state.shownIds.clear();
  state.oldestShown = null;
  $("partner").textContent = username;
  $("message-list").replaceChildren();
  $("send-form").hidden = false;
  $("send-error").textContent = "";
  $("app").classList.add("in-conversation");
  drawUsers();
  await loadPage(null);
  scrollToBottom();
  $("send-body").focus();
}

async function loadPage(before) {
  const partner = state.partner;
  let path = `/message/?target=${encodeURIComponent(partner)}&limit=${PAGE_SIZE}`;
  if (before !== null) path += `&before=${before}`;
  const page = await api(path);
  if (partner !== state.partner) return; // the user switched conversations meanwhile
  for (const message of page.results) drawMessage(message);
  $("load-older").hidden = !page.next;
}

$("load-older").addEventListener("click", async () => {
  const box = $("messages");
  const fromBottom = box.scrollHeight - box.scrollTop;
  await loadPage(state.oldestShown);
  box.scrollTop = box.scrollHeight - fromBottom;
});

$("back-button").addEventListener("click", () => {
  $("app").classList.remove("in-conversation");
  state.partner = null;
  drawUsers();
});

function drawMessage(message) {
  if (state.shownIds.has(message.id)) return;
  state.shownIds.add(message.id);
  if (state.oldestShown === null || message.id < state.oldestShown) state.oldestShown = message.id;
  const item = document.createElement("li");
  item.dataset.id = String(message.id);
  if (message.user === state.me) item.classList.add("mine");
  // Bidirectional overrides in a body stay inside it: its own direction, isolated.
  const body = document.createElement("span");
  body.className = "body";
  body.dir = "auto";
  body.textContent = message.body;
  item.append(body);
  const time = document.createElement("time");
  time.dateTime = message.timestamp;
  time.textContent = new Date(message.timestamp).toLocaleString();
  item.append(time);
  const list = $("message-list");
  // Keep the list ordered by id whichever way messages arrive.
  let anchor = null;
  const last = list.lastElementChild;
  if (!last || Number(last.dataset.id) > message.id) {
    for (const other of list.children) {
      if (Number(other.dataset.id) > message.id) { anchor = other; break; }
    }
  }
  list.insertBefore(item, anchor);
}

function scrollToBottom() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

$("send-body").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("send-form").requestSubmit();
  }
});

$("send-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("send-body");
  const body = input.value;
  if (!body.trim() || !state.partner) return;
  $("send-error").textContent = "";
  // One key per attempt: a retry of the same text after a network error is stored once.
  const key = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
  input.value = "";
  try {
    const message = await api("/message/", {
      json: { recipient: state.partner, body },
      headers: { "Idempotency-Key": key },
    });
    onMessage(message);
  } catch (error) {
    input.value = body;
    $("send-error").textContent = error.message;
  }
});

// ---- live updates ----

function onMessage(message) {
  if (state.lastEventId === null || message.id > state.lastEventId) state.lastEventId = message.id;
  const partner = message.user === state.me ? message.recipient : message.user;
  if (partner === state.partner) {
    const box = $("messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    drawMessage(message);
    if (atBottom || message.user === state.me) scrollToBottom();
  } else if (message.user !== state.me) {
    state.unread.set(partner, (state.unread.get(partner) || 0) + 1);
    if (!state.users.some((u) => u.username === partner)) loadUsers().catch(() => {});
    drawUsers();
  }
}

async function onFrame(frame) {
  // `position` orders every durable event; resuming from the last one seen is always safe.
  if (typeof frame.position === "number" && (state.lastEventId === null || frame.position > state.lastEventId)) {
    state.lastEventId = frame.position;
  }
  if (frame.type === "resync" || frame.resync) {
    // Too much was missed to replay: reload what is on screen and start from the newest id.
    await primeLastEventId();
    if (state.partner) await openConversation(state.partner);
    return;
  }
  if (frame.data) {
    onMessage(frame.data);
  } else if (frame.message) {
    onMessage(await api(`/message/${encodeURIComponent(frame.message)}/`));
  }
}

async function primeLastEventId() {
  const newest = await api("/message/?limit=1");
  state.lastEventId = newest.results.length ? newest.results[0].id : 0;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const since = state.lastEventId !== null ? `?since=${state.lastEventId}` : "";
  const socket = new WebSocket(`${scheme}//${location.host}/ws${since}`);
  state.socket = socket;
  let queue = Promise.resolve();
  socket.addEventListener("open", () => {
    state.reconnectDelay = 500;
    $("connection").textContent = "live";
    $("connection").classList.add("live");
  });
  socket.addEventListener("message", (event) => {
    let frame;
    try { frame = JSON.parse(event.data); } catch (_) { return; }
    queue = queue.then(() => onFrame(frame)).catch(() => {});
  });
  socket.addEventListener("close", (event) => {
    if (state.socket !== socket) return;
    state.socket = null;
    $("connection").classList.remove("live");
    if (event.code === 4001) {
      // The session ended (logged out elsewhere, or expired): reconnecting would be refused.
      state.me = null;
      $("connection").textContent = "offline";
      showAuth("Your session ended. Please log in again.");
      return;
    }
    if (event.code === 1008) {
      // Too many open tabs: reconnecting would close another one, which would do the same.
      $("connection").textContent = "closed: too many open tabs (reload to reconnect)";
      return;
    }
    $("connection").textContent = "reconnecting…";
    if (!state.me) return;
    setTimeout(() => { if (state.me && !state.socket) connect(); }, state.reconnectDelay);
    state.reconnectDelay = Math.min(state.reconnectDelay * 2, 10000);
  });
}

function closeSocket() {
  const socket = state.socket;
  state.socket = null;
  if (socket) socket.close();
  $("connection").textContent = "offline";
  $("connection").classList.remove("live");
}

// ---- start ----

async function start() {
  $("auth").hidden = true;
  $("app").hidden = false;
  $("me").textContent = state.me;
  await primeLastEventId();
  await loadUsers();
  connect();
}

(async () => {
  if (!state.me) return showAuth();
  try {
    await start();
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) showAuth(error.message);
  }
})();
