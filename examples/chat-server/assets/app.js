// chatcore web UI: plain modern JavaScript, no build step, nothing loaded from the internet.
// Every piece of user content goes into the page with textContent, never as HTML.
"use strict";

const API = "/api/v1";
const PAGE_SIZE = 15;
const TITLE = "chatcore";
const $ = (id) => document.getElementById(id);

const state = {
  me: null,
  partner: null,          // username of the open conversation
  oldestShown: null,      // id of the oldest message drawn, for "load older"
  newestShown: null,      // id of the newest message drawn, what a read marker moves to
  newestFromPeer: null,   // id of the peer's newest message drawn: nothing newer, nothing to mark
  shownIds: new Set(),    // ids drawn in the open conversation (no duplicates)
  lastEventId: null,      // highest position this page has heard of, for ?since= on reconnect
  conversations: new Map(), // peer -> {peer, last_message, unread, read_up_to, peer_read_up_to}
  unreadTotal: 0,         // over every conversation, including those not loaded yet
  inboxNext: null,        // path of the next inbox page, null when all are loaded
  directory: [],
  marking: null,
  localChanges: 0,        // bumped by every local count change, to spot a refetch that predates one          // the read-marker POST in flight, so there is one at a time
  socket: null,
  reconnectDelay: 500,
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

// ---- time ----

function sameDay(a, b) {
  return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
}

function clockTime(date) {
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// The inbox shows hh:mm for today and the date for anything older.
function shortWhen(date) {
  const now = new Date();
  if (sameDay(date, now)) return clockTime(date);
  const options = { month: "short", day: "numeric" };
  if (date.getFullYear() !== now.getFullYear()) options.year = "numeric";
  return date.toLocaleDateString([], options);
}

function dayLabel(date) {
  const now = new Date();
  if (sameDay(date, now)) return "Today";
  const yesterday = new Date(now);
  yesterday.setDate(now.getDate() - 1);
  if (sameDay(date, yesterday)) return "Yesterday";
  const options = { weekday: "long", month: "long", day: "numeric" };
  if (date.getFullYear() !== now.getFullYear()) options.year = "numeric";
  return date.toLocaleDateString([], options);
}

function dayKey(date) {
  return `${date.getFullYear()}-${date.getMonth() + 1}-${date.getDate()}`;
}

// ---- authentication ----

function showAuth(message = "") {
  closeSocket();
  state.me = null;
  $("loading").hidden = true;
  $("app").hidden = true;
  $("auth").hidden = false;
  $("auth-error").textContent = message;
  document.title = TITLE;
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
    $("auth-password").value = "";
    await start(session.username);
  } catch (error) {
    $("auth-error").textContent = error.message;
  }
});

$("logout-button").addEventListener("click", async () => {
  try { await api("/auth/logout", { method: "POST" }); } catch (_) { /* already logged out */ }
  closeConversation();
  showAuth();
});

// ---- inbox ----

function conversationOf(message) {
  // A note to self is the conversation with yourself.
  return message.user === state.me ? message.recipient : message.user;
}

function setUnread(conversation, unread) {
  state.localChanges += 1;
  state.unreadTotal = Math.max(0, state.unreadTotal + unread - conversation.unread);
  conversation.unread = unread;
}

// Merges a page of conversations; a conversation known locally with a newer message keeps
// its local state (a live frame overtook the request), and a refetch follows anyway.
function mergeConversations(results) {
  let overtaken = false;
  for (const fetched of results) {
    const known = state.conversations.get(fetched.peer);
    if (known && known.last_message.id > fetched.last_message.id) {
      known.read_up_to = maxId(known.read_up_to, fetched.read_up_to);
      known.peer_read_up_to = maxId(known.peer_read_up_to, fetched.peer_read_up_to);
      overtaken = true;
      continue;
    }
    const merged = { ...fetched };
    if (known) {
      // Markers only move forward: a live read frame may be newer than the page.
      merged.read_up_to = maxId(known.read_up_to, fetched.read_up_to);
      merged.peer_read_up_to = maxId(known.peer_read_up_to, fetched.peer_read_up_to);
    }
    state.conversations.set(fetched.peer, merged);
  }
  return overtaken;
}

function maxId(a, b) {
  if (a === null || a === undefined) return b === undefined ? null : b;
  if (b === null || b === undefined) return a;
  return Math.max(a, b);
}

async function loadInbox() {
  const page = await api("/conversation/");
  state.conversations.clear();
  mergeConversations(page.results);
  state.unreadTotal = page.unread_total;
  state.inboxNext = page.next;
  drawInbox();
}

$("inbox-more").addEventListener("click", async () => {
  if (!state.inboxNext) return;
  let page;
  try {
    // `next` is a path under the API root, as the server printed it.
    page = await api(state.inboxNext.replace(/^\/api\/v1/, ""));
  } catch (_) {
    return; // the button stays for another try
  }
  mergeConversations(page.results);
  state.unreadTotal = page.unread_total;
  state.inboxNext = page.next;
  drawInbox();
});

// Several events in a burst cost one request: the first page carries every count that
// changed, since a conversation with news sorts first.
let refreshTimer = null;
let refreshing = null;
let refreshAgain = false;
function refreshInboxSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refreshInbox, 150);
}

async function refreshInbox() {
  if (refreshing) { refreshAgain = true; return; }
  refreshing = (async () => {
    // A page older than a live frame has a total without that frame's message: ask again,
    // a few times at most (the server has stored whatever a frame announced).
    let rounds = 0;
    do {
      refreshAgain = false;
      try {
        const changes = state.localChanges;
        const page = await api("/conversation/");
        // A count changed here while the page was out (a read answered, a frame arrived):
        // the page may predate it, so it is asked for again rather than shown.
        if (changes !== state.localChanges && rounds < 2) { refreshAgain = true; continue; }
        if (mergeConversations(page.results)) refreshAgain = true;
        state.unreadTotal = page.unread_total;
        drawInbox();
      } catch (_) { /* the next event or reconnect retries */ }
    } while (refreshAgain && ++rounds < 3);
  })();
  await refreshing;
  refreshing = null;
}

function drawInbox() {
  const list = $("inbox-list");
  // Redrawing replaces the buttons: keyboard focus must not fall back to the page's start.
  const focused = document.activeElement ? document.activeElement.closest("#inbox-list li") : null;
  const keepFocus = focused ? focused.dataset.peer : null;
  const sorted = [...state.conversations.values()]
    .sort((a, b) => b.last_message.id - a.last_message.id);
  list.replaceChildren();
  for (const conversation of sorted) list.append(inboxItem(conversation));
  $("inbox-empty").hidden = sorted.length > 0;
  $("inbox-more").hidden = !state.inboxNext;
  if (keepFocus !== null) {
    const again = list.querySelector(`li[data-peer="${CSS.escape(keepFocus)}"] button`);
    if (again) again.focus();
  }
  document.title = state.unreadTotal > 0 ? `(${state.unreadTotal}) ${TITLE}` : TITLE;
  // The open conversation's "Seen" follows the peer's marker, wherever it was learnt.
  drawSeen();
}

function inboxItem(conversation) {
  const item = document.createElement("li");
  item.dataset.peer = conversation.peer;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "conversation";
  if (conversation.peer === state.partner) {
    item.classList.add("active");
    button.setAttribute("aria-current", "true");
  }
  if (conversation.unread > 0) item.classList.add("has-unread");

  const top = document.createElement("span");
  top.className = "top";
  const peer = document.createElement("span");
  peer.className = "peer";
  peer.dir = "auto";
  peer.textContent = conversation.peer === state.me ? `${conversation.peer} (you)` : conversation.peer;
  const when = document.createElement("time");
  when.className = "when";
  const date = new Date(conversation.last_message.timestamp);
  when.dateTime = conversation.last_message.timestamp;
  when.title = date.toLocaleString();
  when.textContent = shortWhen(date);
  top.append(peer, when);

  const bottom = document.createElement("span");
  bottom.className = "bottom";
  const preview = document.createElement("span");
  preview.className = "preview";
  if (conversation.last_message.user === state.me && conversation.peer !== state.me) {
    const you = document.createElement("span");
    you.className = "you";
    you.textContent = "You: ";
    preview.append(you);
  }
  // One line: the body's line breaks become spaces, and its direction stays inside it.
  const text = document.createElement("bdi");
  text.textContent = conversation.last_message.body.replace(/\s+/g, " ");
  preview.append(text);
  bottom.append(preview);
  if (conversation.unread > 0) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = String(conversation.unread);
    badge.setAttribute("aria-label", `${conversation.unread} unread`);
    bottom.append(badge);
  }
  button.append(top, bottom);
  button.addEventListener("click", () => openConversation(conversation.peer));
  item.append(button);
  return item;
}

// ---- directory: starting a conversation ----

async function loadDirectory() {
  const q = $("user-search").value.trim();
  if (!q) {
    state.directory = [];
    showDirectory(false);
    return;
  }
  const users = await api(`/user/?q=${encodeURIComponent(q)}&limit=20`);
  if ($("user-search").value.trim() !== q) return; // typed on meanwhile
  state.directory = users;
  drawDirectory();
  showDirectory(true);
}

function showDirectory(on) {
  $("directory-pane").hidden = !on;
  $("inbox-pane").hidden = on;
}

function drawDirectory() {
  const list = $("directory-list");
  list.replaceChildren();
  for (const user of state.directory) {
    const item = document.createElement("li");
    item.dataset.username = user.username;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "person";
    button.dir = "auto";
    button.textContent = user.username;
    button.addEventListener("click", () => {
      $("user-search").value = "";
      showDirectory(false);
      openConversation(user.username);
    });
    item.append(button);
    list.append(item);
  }
  $("directory-empty").hidden = state.directory.length > 0;
}

let searchTimer = null;
$("user-search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => loadDirectory().catch(() => {}), 150);
});

$("user-search").addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    $("user-search").value = "";
    showDirectory(false);
  } else if (event.key === "Enter") {
    event.preventDefault();
    const first = $("directory-list").querySelector("button");
    if (first) first.click();
  }
});

// ---- conversation ----

async function openConversation(username) {
  state.partner = username;
  state.shownIds.clear();
  state.oldestShown = null;
  state.newestShown = null;
  state.newestFromPeer = null;
  $("partner").textContent = username === state.me ? `${username} (you)` : username;
  $("message-list").replaceChildren();
  $("send-form").hidden = false;
  $("send-error").textContent = "";
  $("app").classList.add("in-conversation");
  drawInbox();
  await loadPage(null);
  if (username !== state.partner) return;
  scrollToBottom();
  $("send-body").focus();
  maybeMarkRead();
}

function closeConversation() {
  state.partner = null;
  $("app").classList.remove("in-conversation");
  $("partner").textContent = "Pick a conversation";
  $("message-list").replaceChildren();
  $("send-form").hidden = true;
  $("load-older").hidden = true;
}

async function loadPage(before) {
  const partner = state.partner;
  let path = `/message/?target=${encodeURIComponent(partner)}&limit=${PAGE_SIZE}`;
  if (before !== null) path += `&before=${before}`;
  const page = await api(path);
  if (partner !== state.partner) return; // the user switched conversations meanwhile
  for (const message of page.results) drawMessage(message);
  drawDayLines();
  drawSeen();
  $("load-older").hidden = !page.next;
}

$("load-older").addEventListener("click", async () => {
  const box = $("messages");
  const fromBottom = box.scrollHeight - box.scrollTop;
  await loadPage(state.oldestShown);
  box.scrollTop = box.scrollHeight - fromBottom;
});

$("back-button").addEventListener("click", () => {
  const partner = state.partner;
  closeConversation();
  drawInbox();
  const item = $("inbox-list").querySelector(`li[data-peer="${CSS.escape(partner || "")}"] button`);
  if (item) item.focus();
});

function drawMessage(message) {
  if (state.shownIds.has(message.id)) return false;
  state.shownIds.add(message.id);
  if (state.oldestShown === null || message.id < state.oldestShown) state.oldestShown = message.id;
  if (state.newestShown === null || message.id > state.newestShown) state.newestShown = message.id;
  if (message.user !== state.me && (state.newestFromPeer === null || message.id > state.newestFromPeer)) {
    state.newestFromPeer = message.id;
  }
  const item = document.createElement("li");
  item.className = "msg";
  item.dataset.id = String(message.id);
  const date = new Date(message.timestamp);
  item.dataset.day = dayKey(date);
  if (message.user === state.me) item.classList.add("mine");
  // Bidirectional overrides in a body stay inside it: its own direction, isolated.
  const body = document.createElement("span");
  body.className = "body";
  body.dir = "auto";
  body.textContent = message.body;
  item.append(body);
  // The day is on the date line above; the bubble needs only the time.
  const time = document.createElement("time");
  time.dateTime = message.timestamp;
  time.title = date.toLocaleString();
  time.textContent = clockTime(date);
  item.append(time);
  const list = $("message-list");
  // Keep the list ordered by id whichever way messages arrive.
  let anchor = null;
  const last = lastMessageItem(list);
  if (last && Number(last.dataset.id) > message.id) {
    for (const other of list.querySelectorAll("li.msg")) {
      if (Number(other.dataset.id) > message.id) { anchor = other; break; }
    }
  }
  list.insertBefore(item, anchor);
  return true;
}

function lastMessageItem(list) {
  const items = list.querySelectorAll("li.msg");
  return items.length ? items[items.length - 1] : null;
}

// One date line above the first message of each day.
function drawDayLines() {
  const list = $("message-list");
  for (const line of list.querySelectorAll("li.day")) line.remove();
  let previous = null;
  for (const item of [...list.querySelectorAll("li.msg")]) {
    if (item.dataset.day !== previous) {
      previous = item.dataset.day;
      const line = document.createElement("li");
      line.className = "day";
      const time = document.createElement("time");
      const stamp = item.querySelector("time").dateTime;
      time.dateTime = stamp.slice(0, 10);
      time.textContent = dayLabel(new Date(stamp));
      line.append(time);
      list.insertBefore(line, item);
    }
  }
}

// "Seen" under my latest message that the peer has read.
function drawSeen() {
  const list = $("message-list");
  for (const old of list.querySelectorAll(".seen")) old.remove();
  if (!state.partner || state.partner === state.me) return;
  const conversation = state.conversations.get(state.partner);
  const upTo = conversation ? conversation.peer_read_up_to : null;
  if (upTo === null || upTo === undefined) return;
  const mine = [...list.querySelectorAll("li.msg.mine")].filter((item) => Number(item.dataset.id) <= upTo);
  if (!mine.length) return;
  const seen = document.createElement("span");
  seen.className = "seen";
  seen.textContent = "Seen";
  mine[mine.length - 1].append(seen);
}

function scrollToBottom() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

function latestInView() {
  const box = $("messages");
  // A hidden pane (the inbox on a phone) shows nothing, however it is scrolled.
  if (!state.partner || box.getClientRects().length === 0 || box.clientHeight === 0) return false;
  return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
}

function watching() {
  return document.visibilityState === "visible" && document.hasFocus() && latestInView();
}

// Moves the read marker to the newest message shown when the reader can see it, and only
// when that would move it: the peer's newest message is past the marker.
function maybeMarkRead() {
  const peer = state.partner;
  if (!peer || peer === state.me || state.marking || !watching()) return;
  if (state.newestFromPeer === null) return;
  const conversation = state.conversations.get(peer);
  const marker = conversation ? conversation.read_up_to : null;
  if (marker !== null && marker !== undefined && marker >= state.newestFromPeer) {
    if (conversation.unread > 0) { setUnread(conversation, 0); drawInbox(); }
    return;
  }
  const upTo = state.newestShown;
  state.marking = (async () => {
    try {
      const answer = await api(`/conversation/${encodeURIComponent(peer)}/read`, { json: { up_to: upTo } });
      const known = state.conversations.get(peer);
      if (known) {
        known.read_up_to = maxId(known.read_up_to, answer.read_up_to);
        setUnread(known, answer.unread);
      } else {
        // Not on a loaded inbox page: only the server knows the total now.
        refreshInboxSoon();
      }
      drawInbox();
    } catch (_) {
      // Not fatal: the next scroll, focus or message tries again.
    }
  })();
  state.marking.finally(() => {
    state.marking = null;
    // Something newer may have arrived while the request was out.
    if (state.partner === peer && state.newestFromPeer !== null && state.newestFromPeer > upTo) maybeMarkRead();
  });
}

window.addEventListener("focus", maybeMarkRead);
document.addEventListener("visibilitychange", maybeMarkRead);
let scrollTimer = null;
$("messages").addEventListener("scroll", () => {
  clearTimeout(scrollTimer);
  scrollTimer = setTimeout(maybeMarkRead, 100);
});

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
    onMessage(message, false);
  } catch (error) {
    input.value = body;
    $("send-error").textContent = error.message;
  }
});

// ---- live updates ----

function onMessage(message, live) {
  const peer = conversationOf(message);
  const fromPeer = message.user !== state.me;
  let conversation = state.conversations.get(peer);
  // An id at or below the newest known one was counted already (a catch-up replay, or the
  // echo of one's own send).
  const isNews = !conversation || message.id > conversation.last_message.id;
  if (!conversation) {
    conversation = { peer, last_message: message, unread: 0, read_up_to: null, peer_read_up_to: null };
    state.conversations.set(peer, conversation);
    // Unknown here: an older conversation below the loaded pages, whose markers and count
    // only the server has.
    refreshInboxSoon();
  }
  if (isNews) conversation.last_message = message;

  let drawn = false;
  if (peer === state.partner) {
    const atBottom = latestInView();
    drawn = drawMessage(message);
    if (drawn) {
      drawDayLines();
      drawSeen();
      if (atBottom || !fromPeer) scrollToBottom();
    }
  }
  if (isNews && fromPeer && peer !== state.me) {
    if (peer === state.partner && watching()) {
      maybeMarkRead();
    } else {
      setUnread(conversation, conversation.unread + 1);
    }
  }
  if (live && drawn && fromPeer) {
    $("announcer").textContent = `${message.user}: ${message.body}`;
  }
  drawInbox();
}

function onRead(frame) {
  if (frame.reader === state.me) {
    // Another tab (or this one) read: the badge follows.
    const conversation = state.conversations.get(frame.peer);
    if (!conversation) { refreshInboxSoon(); return; }
    conversation.read_up_to = maxId(conversation.read_up_to, frame.up_to);
    if (frame.up_to >= conversation.last_message.id) {
      setUnread(conversation, 0);
    } else {
      // Read part of the way: only the server can count what is left.
      refreshInboxSoon();
    }
    drawInbox();
  } else {
    // The peer read my messages: "Seen".
    const conversation = state.conversations.get(frame.reader);
    if (!conversation) { refreshInboxSoon(); return; }
    conversation.peer_read_up_to = maxId(conversation.peer_read_up_to, frame.up_to);
    if (frame.reader === state.partner) drawSeen();
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
    await loadInbox();
    if (state.partner) await openConversation(state.partner);
    return;
  }
  if (frame.type === "read") {
    onRead(frame);
  } else if (frame.type === "message" || frame.type === undefined) {
    if (frame.data) {
      onMessage(frame.data, true);
    } else if (frame.message) {
      onMessage(await api(`/message/${encodeURIComponent(frame.message)}/`), true);
    }
  }
  // Any other type is from a later version: ignored.
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
      closeConversation();
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

async function start(username) {
  closeConversation();
  state.me = username;
  state.conversations.clear();
  state.unreadTotal = 0;
  $("user-search").value = "";
  showDirectory(false);
  $("loading").hidden = true;
  $("auth").hidden = true;
  $("app").hidden = false;
  $("me").textContent = username;
  // The position comes first: whatever happens after it is replayed on the socket, and
  // replays are harmless (counted messages are recognised by id, markers only move forward).
  await primeLastEventId();
  await loadInbox();
  connect();
}

// The server, not this page, knows whether the session cookie is still good.
(async () => {
  let session;
  try {
    session = await api("/auth/session");
  } catch (error) {
    return showAuth(error instanceof ApiError && error.status === 401 ? "" : error.message);
  }
  try {
    await start(session.username);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) showAuth(error.message);
  }
})();
