// <chatcore-app>: the chatcore web UI as a custom element. Plain modern JavaScript, an ES
// module with no build step and no dependency; nothing is loaded from the internet. Every
// piece of user content goes into the page with textContent, never as HTML.
//
// A host page adds
//   <script type="module" src="/chat/ui/chatcore-app.js"></script>
//   <chatcore-app></chatcore-app>
// and the element talks to the router it was served by: `base` defaults to the directory
// above this module (the router's mount point), or is given as an attribute.
//
// Attributes:
//   base              where the chat router is mounted (default: derived from this module's URL)
//   fullscreen        fill the viewport (the standalone server's page)
//   document-title    keep the page title as "(unread) <value>"
//   login-url         the host logs people in: on no session, link there instead of the
//                     built-in form, and leave logging out to the host
//   history="off"     do not keep the open conversation in the page's URL (#chat=<name>)
// Events (bubbling, composed): `chatcore-unread` {total}, `chatcore-session` {username|null}.
// Theming: CSS custom properties --chatcore-* (see chatcore-app.css).

const MODULE_BASE = new URL("../", import.meta.url);
const STYLESHEET = new URL("chatcore-app.css", import.meta.url).href;
const PAGE_SIZE = 15;
const HASH_KEY = "chat=";
// The counter appears once a message is this close to the server's limit.
const COUNTER_MARGIN = 0.9;
const OFFLINE = "Cannot reach the chat server. Check your connection and try again.";
// The server relays typing for a few seconds (`expires_in_ms`); renewed at most this often.
const TYPING_EVERY_MS = 3000;
// How often "last seen 5 min ago" is redrawn.
const CLOCK_MS = 20000;
const DELETED = "Message deleted";

// Static markup only: nothing from a user or the server is ever put into it.
const MARKUP = `
<link rel="stylesheet" href="${STYLESHEET}">
<div class="shell">
<main id="auth" class="card" hidden>
  <h1>Chat</h1>
  <form id="auth-form" autocomplete="on">
    <label>Username <input id="auth-username" name="username" required maxlength="150" autocomplete="username" dir="auto"></label>
    <label>Password <input id="auth-password" name="password" type="password" required minlength="8" autocomplete="current-password"></label>
    <div class="row">
      <button type="submit" id="login-button" data-action="login">Log in</button>
      <button type="submit" id="register-button" data-action="register" class="secondary">Sign up</button>
    </div>
    <p class="hint">Enter logs in. New here? Choose a name and a password of 8 characters or more, then Sign up.</p>
    <p id="auth-error" class="error" role="alert"></p>
  </form>
</main>
<main id="host-login" class="card" hidden>
  <p>You are not logged in to the chat.</p>
  <p><a id="host-login-link">Log in</a></p>
</main>

<p id="loading" class="loading">Loading…</p>

<div id="app" hidden>
  <aside id="sidebar" aria-label="Conversations">
    <header class="bar">
      <span id="me" class="me" dir="auto"></span>
      <button id="settings-button" type="button" class="link" aria-haspopup="dialog">Settings</button>
      <button id="logout-button" type="button" class="link">Log out</button>
    </header>
    <input id="user-search" type="search" placeholder="Search people…" dir="auto"
           aria-label="Search people to start a conversation" autocomplete="off">
    <nav id="inbox-pane" aria-label="Inbox">
      <p id="inbox-empty" class="hint" hidden>No conversations yet. Search for someone above to start one.</p>
      <p id="nobody" class="hint" hidden>Nobody else has an account yet. Once someone signs up, search for
        their name above to write to them.</p>
      <ul id="inbox-list"></ul>
      <button id="inbox-more" type="button" class="secondary" hidden>More conversations</button>
    </nav>
    <nav id="directory-pane" aria-label="People" hidden>
      <p id="directory-empty" class="hint" hidden>Nobody by that name.</p>
      <ul id="directory-list"></ul>
    </nav>
  </aside>
  <section id="conversation" aria-labelledby="partner">
    <header class="bar">
      <button id="back-button" type="button" class="link" aria-label="Back to conversations">&larr;</button>
      <div class="who">
        <h2 id="partner" dir="auto" tabindex="-1">No conversation open</h2>
        <p id="partner-status" class="partner-status" hidden></p>
      </div>
      <button id="block-button" type="button" class="link" hidden>Block</button>
      <span id="connection" class="status" title="Live updates">offline</span>
    </header>
    <div id="banner" class="banner" role="status" hidden>
      <span id="banner-text"></span>
      <button id="retry-now" type="button" class="secondary">Retry now</button>
    </div>
    <p id="pick" class="hint pick">Choose a conversation, or search for someone to write to.</p>
    <div id="message-menu" class="menu" role="menu" aria-label="Message actions" hidden>
      <button id="menu-edit" type="button" role="menuitem" tabindex="-1">Edit</button>
      <button id="menu-delete" type="button" role="menuitem" tabindex="-1">Delete</button>
    </div>
    <div id="messages" tabindex="-1">
      <button id="load-older" type="button" class="secondary" hidden>Load older</button>
      <ol id="message-list" aria-label="Messages"></ol>
    </div>
    <div id="blocked-note" class="blocked-note" hidden>
      <p id="blocked-text"></p>
      <button id="unblock-button" type="button" class="secondary">Unblock</button>
    </div>
    <div id="editing-bar" class="editing-bar" hidden>
      <span id="editing-text">Editing your message: Enter saves, Escape cancels.</span>
      <button id="edit-cancel" type="button" class="link">Cancel</button>
    </div>
    <form id="send-form" hidden>
      <textarea id="send-body" rows="1" aria-describedby="send-counter"></textarea>
      <button type="submit" id="send-button">Send</button>
    </form>
    <p id="send-counter" class="counter" hidden></p>
    <div id="send-problem" class="problem" hidden>
      <p id="send-error" class="error" role="alert"></p>
      <button id="send-retry" type="button" class="secondary" hidden>Retry</button>
    </div>
  </section>
  <!-- Only messages that arrive live are announced, never a page of history being loaded. -->
  <div id="announcer" class="visually-hidden" aria-live="polite"></div>
</div>

<dialog id="settings" aria-labelledby="settings-title">
  <header class="dialog-head">
    <h2 id="settings-title">Settings</h2>
    <button id="settings-close" type="button" class="link">Close</button>
  </header>
  <p class="hint">Logged in as <bdi id="settings-me"></bdi>.</p>
  <section aria-labelledby="blocked-title">
    <h3 id="blocked-title">Blocked people</h3>
    <p id="blocked-none" class="hint">You have blocked nobody.</p>
    <ul id="blocked-list" class="blocked-list"></ul>
    <p id="blocked-error" class="error" role="alert"></p>
  </section>
  <section aria-labelledby="delete-title">
    <h3 id="delete-title">Delete your account</h3>
    <p class="hint">Your messages become “Message deleted” for the people you wrote to, you are logged out
      everywhere, and your name stays reserved. This cannot be undone.</p>
    <form id="delete-form">
      <label>Your password <input id="delete-password" type="password" required autocomplete="current-password"></label>
      <button type="submit" id="delete-account" class="danger">Delete my account…</button>
    </form>
    <p id="delete-error" class="error" role="alert"></p>
  </section>
</dialog>

<dialog id="confirm" aria-labelledby="confirm-text">
  <p id="confirm-text"></p>
  <div class="row end">
    <button id="confirm-cancel" type="button" class="secondary">Cancel</button>
    <button id="confirm-ok" type="button" class="danger"></button>
  </div>
</dialog>
</div>`;

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// An answer that belongs to a session that has ended since (logout): dropped unseen.
class Stale extends Error {}

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

// "just now", "5 min ago", "2 hours ago", "yesterday at 10:05", "on Mar 3": when someone was
// last online, from `now`.
export function lastSeenText(date, now = new Date()) {
  const minutes = Math.floor(Math.max(0, now - date) / 60000);
  if (minutes < 1) return "just now";
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return hours === 1 ? "1 hour ago" : `${hours} hours ago`;
  const yesterday = new Date(now);
  yesterday.setDate(now.getDate() - 1);
  if (sameDay(date, yesterday)) return `yesterday at ${clockTime(date)}`;
  const options = { month: "short", day: "numeric" };
  if (date.getFullYear() !== now.getFullYear()) options.year = "numeric";
  return `on ${date.toLocaleDateString([], options)}`;
}

function dayKey(date) {
  return `${date.getFullYear()}-${date.getMonth() + 1}-${date.getDate()}`;
}

function maxId(a, b) {
  if (a === null || a === undefined) return b === undefined ? null : b;
  if (b === null || b === undefined) return a;
  return Math.max(a, b);
}

// What the server counts: Unicode scalar values of the trimmed body (not UTF-16 units).
export function messageLength(text) {
  return [...text.trim()].length;
}

const LINK = /\bhttps?:\/\/[^\s<>"]+/gi;
const TRAILING = /[.,;:!?'")\]}]+$/;

// The body as text nodes, with http(s) addresses as links; only ever text and <a>.
export function linkify(body) {
  const fragment = document.createDocumentFragment();
  let last = 0;
  for (const match of body.matchAll(LINK)) {
    let url = match[0];
    const trailing = url.match(TRAILING);
    if (trailing) url = url.slice(0, url.length - trailing[0].length);
    if (url.length <= "https://".length) continue;
    if (match.index > last) fragment.append(body.slice(last, match.index));
    const link = document.createElement("a");
    link.href = url;
    link.textContent = url;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    fragment.append(link);
    last = match.index + url.length;
  }
  if (last < body.length) fragment.append(body.slice(last));
  return fragment;
}

function newKey() {
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
}

function freshState() {
  return {
    me: null,
    maxChars: 4000,         // the server's limit, from GET /auth/session
    partner: null,          // username of the open conversation
    oldestShown: null,      // id of the oldest message drawn, for "load older"
    newestShown: null,      // id of the newest message drawn, what a read marker moves to
    newestFromPeer: null,   // id of the peer's newest message drawn: nothing newer, nothing to mark
    shown: new Map(),       // id -> message drawn in the open conversation (no duplicates)
    lastEventId: null,      // highest position this page has heard of, for ?since= on reconnect
    conversations: new Map(), // peer -> {peer, last_message, unread, read_up_to, peer_read_up_to}
    unreadTotal: 0,         // over every conversation, including those not loaded yet
    inboxNext: null,        // path of the next inbox page, null when all are loaded
    directory: [],
    marking: null,          // the read-marker POST in flight, so there is one at a time
    localChanges: 0,        // bumped by every local count change, to spot a refetch that predates one
    pending: null,          // {recipient, body, key} of a send that failed, retried with its key
    drafts: new Map(),      // peer -> unsent text of a conversation not open
    socket: null,
    reconnectDelay: 500,
    reconnectTimer: null,
    reconnectAt: 0,
    pushedHistory: false,   // this element pushed the open conversation onto the history
    editing: null,          // {id, draft}: the composer edits message `id`; `draft` comes back after
    presence: new Map(),    // username -> {online, last_seen}, as the server last told
    typingFrom: new Map(),  // username -> timer: they are typing to me until it fires
    typingTo: null,         // whom this page last told "typing" (and has not told "stop")
    typingSentAt: 0,
    blocked: new Map(),     // lower-cased username -> username, the people I block
    blocking: true,         // the server has the block routes
    leaving: false,         // the account is being deleted: its socket's close is expected
    connectedOnce: false,   // a socket of this session has opened before (the next is a reconnect)
  };
}

function mount(host) {
  const root = host.shadowRoot;
  const $ = (id) => root.getElementById(id);
  const base = new URL(host.getAttribute("base") || MODULE_BASE, location.href);
  if (!base.pathname.endsWith("/")) base.pathname += "/";
  const apiRoot = new URL("api/v1", base).href;
  const loginUrl = host.getAttribute("login-url");
  const useHistory = host.getAttribute("history") !== "off";
  const touch = window.matchMedia("(pointer: coarse)").matches;
  // A host that logs people in also logs them out, and keeps their accounts.
  $("logout-button").hidden = loginUrl !== null;
  $("delete-title").parentElement.hidden = loginUrl !== null;
  const cleanups = [];
  let state = freshState();
  // Bumped on every logout and login: answers to requests of an earlier session are dropped.
  let epoch = 0;
  let refreshTimer = null;
  let refreshing = null;
  let refreshAgain = false;
  let searchTimer = null;
  let scrollTimer = null;

  function on(target, type, handler) {
    target.addEventListener(type, handler);
    cleanups.push(() => target.removeEventListener(type, handler));
  }

  function emit(type, detail) {
    host.dispatchEvent(new CustomEvent(type, { detail, bubbles: true, composed: true }));
  }

  async function request(url, options = {}) {
    const started = epoch;
    const init = { credentials: "same-origin", headers: {}, ...options };
    if (options.json !== undefined) {
      init.method = init.method || "POST";
      init.headers = { ...init.headers, "Content-Type": "application/json" };
      init.body = JSON.stringify(options.json);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (_) {
      if (started !== epoch) throw new Stale();
      throw new ApiError(0, OFFLINE);
    }
    if (started !== epoch) throw new Stale();
    if (response.status === 204) return null;
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    if (started !== epoch) throw new Stale();
    if (!response.ok) {
      if (response.status === 401 && !String(url).startsWith(`${apiRoot}/auth/`)) showAuth();
      const message = (body && body.error) || `The chat server answered ${response.status}. Try again in a moment.`;
      throw new ApiError(response.status, message);
    }
    return body;
  }

  const api = (path, options) => request(apiRoot + path, options);

  // Shows an error in `element`, unless it belongs to an ended session.
  function showError(element, error) {
    if (error instanceof Stale) return;
    element.textContent = error instanceof ApiError ? error.message : "Something went wrong. Try again.";
  }

  // ---- the URL: #chat=<name> keeps the open conversation across a reload ----

  function peerInUrl() {
    const hash = location.hash.slice(1);
    if (!hash.startsWith(HASH_KEY)) return null;
    try { return decodeURIComponent(hash.slice(HASH_KEY.length)) || null; } catch (_) { return null; }
  }

  function urlFor(peer) {
    const here = location.pathname + location.search;
    return peer === null ? here : `${here}#${HASH_KEY}${encodeURIComponent(peer)}`;
  }

  function recordInUrl(peer) {
    if (!useHistory || peerInUrl() === peer) return;
    if (peer !== null && state.partner === null && !state.pushedHistory) {
      // From the list into a conversation: Back (a phone's too) returns to the list.
      history.pushState({ chatcore: true }, "", urlFor(peer));
      state.pushedHistory = true;
    } else {
      history.replaceState(history.state, "", urlFor(peer));
    }
  }

  on(window, "popstate", () => {
    if (!state.me) return;
    const peer = peerInUrl();
    if (peer === null) {
      state.pushedHistory = false;
      if (state.partner !== null) leaveConversation();
    } else if (peer !== state.partner) {
      openConversation(peer, { record: false }).catch(() => {});
    }
  });

  // ---- authentication ----

  function setTitle() {
    const title = host.getAttribute("document-title");
    if (title !== null) document.title = state.unreadTotal > 0 ? `(${state.unreadTotal}) ${title}` : title;
  }

  // Forgets every piece of the previous user's state: data, screen, timers, socket, and
  // (when `forgetUrl`, on logging out) the conversation in the URL.
  function reset(forgetUrl) {
    stopTyping();
    for (const timer of state.typingFrom.values()) clearTimeout(timer);
    closeMenu(false);
    if (confirming) confirming.finish(false);
    if ($("settings").open) $("settings").close();
    epoch += 1;
    closeSocket();
    clearTimeout(refreshTimer);
    clearTimeout(searchTimer);
    clearTimeout(scrollTimer);
    refreshAgain = false;
    state = freshState();
    if (forgetUrl && useHistory && peerInUrl() !== null) history.replaceState(history.state, "", urlFor(null));
    closeConversation();
    $("me").textContent = "";
    $("user-search").value = "";
    $("inbox-list").replaceChildren();
    $("directory-list").replaceChildren();
    $("inbox-empty").hidden = true;
    $("nobody").hidden = true;
    $("inbox-more").hidden = true;
    $("directory-empty").hidden = true;
    showDirectory(false);
    $("announcer").textContent = "";
    $("send-body").value = "";
    $("delete-password").value = "";
    $("delete-error").textContent = "";
    $("blocked-list").replaceChildren();
    $("settings-me").textContent = "";
    drawBlocked();
    drawPartnerStatus();
    drawComposer();
    clearProblem();
    setTitle();
    emit("chatcore-unread", { total: 0 });
  }

  function showAuth(message = "") {
    const hadUser = state.me !== null;
    reset(hadUser);
    $("loading").hidden = true;
    $("app").hidden = true;
    if (loginUrl !== null) {
      $("host-login-link").href = loginUrl;
      $("host-login").hidden = false;
    } else {
      $("auth").hidden = false;
      // The name the previous user logged in with is theirs too.
      if (hadUser) $("auth-username").value = "";
      $("auth-error").textContent = message;
      $("auth-username").focus();
    }
    if (hadUser) emit("chatcore-session", { username: null });
  }

  on($("auth-form"), "submit", async (event) => {
    event.preventDefault();
    // Enter in a field submits with the first button (Log in); a focused button says its own.
    const action = event.submitter ? event.submitter.dataset.action : "login";
    const username = $("auth-username").value.trim();
    const password = $("auth-password").value;
    $("auth-error").textContent = "";
    try {
      if (action === "register") await api("/auth/register", { json: { username, password } });
      await api("/auth/login", { json: { username, password } });
      $("auth-password").value = "";
      // The session answer carries the server's limits as well as the name.
      await start(await api("/auth/session"), { focus: true });
    } catch (error) {
      showError($("auth-error"), error);
    }
  });

  on($("logout-button"), "click", async () => {
    try { await api("/auth/logout", { method: "POST" }); } catch (_) { /* already logged out */ }
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
      learnPresence(fetched.peer, fetched.online, fetched.last_seen);
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

  async function loadInbox() {
    const page = await api("/conversation/");
    state.conversations.clear();
    mergeConversations(page.results);
    state.unreadTotal = page.unread_total;
    state.inboxNext = page.next;
    drawInbox();
    if (page.results.length === 0) await checkNobody();
  }

  // With an empty inbox, says whether there is anybody to write to at all.
  async function checkNobody() {
    const users = await api("/user/?limit=1");
    $("nobody").hidden = users.length > 0 || state.conversations.size > 0;
    $("inbox-empty").hidden = !$("nobody").hidden || state.conversations.size > 0;
  }

  on($("inbox-more"), "click", async () => {
    if (!state.inboxNext) return;
    let page;
    try {
      // `next` is an absolute path on the server, prefix included.
      page = await request(new URL(state.inboxNext, base).href);
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
  function refreshInboxSoon() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refreshInbox, 150);
  }

  async function refreshInbox() {
    if (refreshing) { refreshAgain = true; return; }
    const started = epoch;
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
      } while (refreshAgain && ++rounds < 3 && started === epoch);
    })();
    await refreshing;
    refreshing = null;
  }

  function drawInbox() {
    const list = $("inbox-list");
    // Redrawing replaces the buttons: keyboard focus must not fall back to the page's start.
    const focused = root.activeElement ? root.activeElement.closest("#inbox-list li") : null;
    const keepFocus = focused ? focused.dataset.peer : null;
    const sorted = [...state.conversations.values()]
      .sort((a, b) => b.last_message.id - a.last_message.id);
    list.replaceChildren();
    for (const conversation of sorted) list.append(inboxItem(conversation));
    if (sorted.length > 0) $("nobody").hidden = true;
    $("inbox-empty").hidden = sorted.length > 0 || !$("nobody").hidden;
    $("inbox-more").hidden = !state.inboxNext;
    if (keepFocus !== null) {
      const again = list.querySelector(`li[data-peer="${CSS.escape(keepFocus)}"] button`);
      if (again) again.focus();
    }
    setTitle();
    emit("chatcore-unread", { total: state.unreadTotal });
    // The open conversation's "Seen" follows the peer's marker, and its header the peer's
    // presence, wherever they were learnt.
    drawSeen();
    drawPartnerStatus();
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
    top.append(peer);
    const presence = state.presence.get(conversation.peer);
    if (presence && presence.online && conversation.peer !== state.me) {
      // The dot is seen; its words are read out with the button's name.
      const dot = document.createElement("span");
      dot.className = "dot";
      dot.title = "online";
      dot.setAttribute("aria-hidden", "true");
      const words = document.createElement("span");
      words.className = "visually-hidden";
      words.textContent = ", online,";
      top.append(dot, words);
    }
    const when = document.createElement("time");
    when.className = "when";
    const date = new Date(conversation.last_message.timestamp);
    when.dateTime = conversation.last_message.timestamp;
    when.title = date.toLocaleString();
    when.textContent = shortWhen(date);
    top.append(when);

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
    if (conversation.last_message.deleted) {
      text.className = "deleted";
      text.textContent = DELETED;
    } else {
      text.textContent = conversation.last_message.body.replace(/\s+/g, " ");
    }
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
    button.addEventListener("click", () => openConversation(conversation.peer).catch(() => {}));
    item.append(button);
    return item;
  }

  // Up and Down (Home, End) move between the buttons of a list, as in a menu.
  function arrowKeys(list) {
    on(list, "keydown", (event) => {
      const buttons = [...list.querySelectorAll("button")];
      const at = buttons.indexOf(root.activeElement);
      if (at < 0) return;
      let next = null;
      if (event.key === "ArrowDown") next = Math.min(at + 1, buttons.length - 1);
      else if (event.key === "ArrowUp") next = at === 0 ? -1 : at - 1;
      else if (event.key === "Home") next = 0;
      else if (event.key === "End") next = buttons.length - 1;
      else return;
      event.preventDefault();
      if (next === -1) $("user-search").focus();
      else buttons[next].focus();
    });
  }
  arrowKeys($("inbox-list"));
  arrowKeys($("directory-list"));

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
    for (const user of users) learnPresence(user.username, user.online, user.last_seen);
    state.directory = users;
    drawDirectory();
    showDirectory(true);
  }

  function showDirectory(visible) {
    $("directory-pane").hidden = !visible;
    $("inbox-pane").hidden = visible;
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
        openConversation(user.username).catch(() => {});
      });
      item.append(button);
      list.append(item);
    }
    $("directory-empty").hidden = state.directory.length > 0;
  }

  on($("user-search"), "input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => loadDirectory().catch(() => {}), 150);
  });

  on($("user-search"), "keydown", (event) => {
    if (event.key === "Escape") {
      $("user-search").value = "";
      showDirectory(false);
    } else if (event.key === "Enter") {
      event.preventDefault();
      const first = $("directory-list").querySelector("button");
      if (first && !$("directory-pane").hidden) first.click();
    } else if (event.key === "ArrowDown") {
      const pane = $("directory-pane").hidden ? "inbox-list" : "directory-list";
      const first = $(pane).querySelector("button");
      if (first) { event.preventDefault(); first.focus(); }
    }
  });

  // ---- conversation ----

  async function openConversation(username, { record = true } = {}) {
    if (record) recordInUrl(username);
    if (username !== state.partner) {
      closeMenu(false);
      stopEdit();
      stopTyping();
      // A draft stays with the conversation it was written in.
      if (state.partner !== null) state.drafts.set(state.partner, $("send-body").value);
      state.partner = username;
      state.shown.clear();
      state.oldestShown = null;
      state.newestShown = null;
      state.newestFromPeer = null;
      $("message-list").replaceChildren();
      $("send-body").value = state.drafts.get(username) || "";
      // A failed send's problem shows in its own conversation only.
      if (state.pending && state.pending.recipient === username) {
        showProblem(state.pending.problem, true);
      } else {
        clearProblem();
      }
      drawComposer();
    }
    $("partner").textContent = username === state.me ? `${username} (you)` : username;
    $("pick").hidden = true;
    $("messages").hidden = false;
    $("send-form").hidden = false;
    $("app").classList.add("in-conversation");
    drawBlocked();
    drawPartnerStatus();
    drawComposer();
    drawInbox();
    lookUpPresence(username).catch(() => {});
    await loadPage(null);
    if (username !== state.partner) return;
    scrollToBottom();
    $("send-body").focus();
    maybeMarkRead();
  }

  function closeConversation() {
    closeMenu(false);
    stopEdit();
    stopTyping();
    state.partner = null;
    $("app").classList.remove("in-conversation");
    $("partner").textContent = "No conversation open";
    $("message-list").replaceChildren();
    $("pick").hidden = false;
    $("messages").hidden = true;
    $("send-form").hidden = true;
    $("load-older").hidden = true;
    drawBlocked();
    drawPartnerStatus();
  }

  // Back to the list, focus on the conversation just left.
  function leaveConversation() {
    const partner = state.partner;
    closeConversation();
    drawInbox();
    const item = $("inbox-list").querySelector(`li[data-peer="${CSS.escape(partner || "")}"] button`);
    if (item) item.focus();
    else $("user-search").focus();
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

  on($("load-older"), "click", async () => {
    const box = $("messages");
    const fromBottom = box.scrollHeight - box.scrollTop;
    try { await loadPage(state.oldestShown); } catch (_) { return; }
    box.scrollTop = box.scrollHeight - fromBottom;
  });

  on($("back-button"), "click", () => {
    if (useHistory && state.pushedHistory && peerInUrl() === state.partner) {
      // The browser's Back does the same; popstate closes the conversation.
      history.back();
      return;
    }
    recordInUrl(null);
    leaveConversation();
  });

  function drawMessage(message) {
    if (state.shown.has(message.id)) return false;
    state.shown.set(message.id, message);
    if (state.oldestShown === null || message.id < state.oldestShown) state.oldestShown = message.id;
    if (state.newestShown === null || message.id > state.newestShown) state.newestShown = message.id;
    if (message.user !== state.me && (state.newestFromPeer === null || message.id > state.newestFromPeer)) {
      state.newestFromPeer = message.id;
    }
    const item = messageItem(message);
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

  // A message's bubble: its body (or the tombstone's placeholder), its time, "edited", and on
  // one's own messages the button of the edit/delete menu.
  function messageItem(message) {
    const item = document.createElement("li");
    item.className = "msg";
    item.dataset.id = String(message.id);
    const date = new Date(message.timestamp);
    item.dataset.day = dayKey(date);
    const mine = message.user === state.me;
    if (mine) item.classList.add("mine");
    // Bidirectional overrides in a body stay inside it: its own direction, isolated.
    const body = document.createElement("span");
    body.className = "body";
    body.dir = "auto";
    if (message.deleted) {
      item.classList.add("deleted");
      body.textContent = DELETED;
    } else {
      body.append(linkify(message.body));
    }
    item.append(body);
    const meta = document.createElement("span");
    meta.className = "meta";
    // The day is on the date line above; the bubble needs only the time.
    const time = document.createElement("time");
    time.dateTime = message.timestamp;
    time.title = date.toLocaleString();
    time.textContent = clockTime(date);
    meta.append(time);
    if (message.edited && !message.deleted) {
      const edited = document.createElement("span");
      edited.className = "edited";
      edited.textContent = "edited";
      edited.title = `Edited ${new Date(message.edited).toLocaleString()}`;
      meta.append(" · ", edited);
    }
    if (mine && !message.deleted) {
      const actions = document.createElement("button");
      actions.type = "button";
      actions.className = "actions";
      actions.textContent = "⋯";
      actions.setAttribute("aria-label", `Edit or delete your message of ${clockTime(date)}`);
      actions.setAttribute("aria-haspopup", "menu");
      actions.setAttribute("aria-expanded", "false");
      actions.addEventListener("click", () => openMenu(actions, message.id));
      meta.append(actions);
    }
    item.append(meta);
    if (state.editing && state.editing.id === message.id) item.classList.add("editing");
    return item;
  }

  // An edit or a deletion (from this page or a frame): the bubble and the inbox preview follow.
  function onChanged(message) {
    const peer = conversationOf(message);
    const conversation = state.conversations.get(peer);
    if (conversation && conversation.last_message.id === message.id && !conversation.last_message.deleted) {
      conversation.last_message = message;
      drawInbox();
    }
    if (peer !== state.partner) return;
    const shown = state.shown.get(message.id);
    if (!shown) return;
    // What is already newer stays: a tombstone is final, a later edit wins over an earlier one.
    if (shown.deleted || (!message.deleted && shown.edited && message.edited && shown.edited > message.edited)) return;
    state.shown.set(message.id, message);
    if (menuFor === message.id) closeMenu(false);
    const old = $("message-list").querySelector(`li.msg[data-id="${message.id}"]`);
    if (!old) return;
    const hadFocus = old.contains(root.activeElement);
    const item = messageItem(message);
    old.replaceWith(item);
    drawSeen();
    if (message.deleted && state.editing && state.editing.id === message.id) {
      stopEdit();
      showProblem("The message you were editing was deleted.", false);
    }
    if (hadFocus) {
      const again = item.querySelector("button.actions");
      if (again) again.focus();
      else $("send-body").focus();
    }
  }

  // ---- the menu of one's own message: Edit, Delete ----

  let menuFor = null;
  let menuTrigger = null;

  function openMenu(trigger, id) {
    if (menuFor === id) { closeMenu(true); return; }
    closeMenu(false);
    menuFor = id;
    menuTrigger = trigger;
    const menu = $("message-menu");
    menu.hidden = false;
    trigger.setAttribute("aria-expanded", "true");
    // Under its button, right-aligned; above it when there is no room below.
    const box = $("conversation").getBoundingClientRect();
    const at = trigger.getBoundingClientRect();
    const height = menu.offsetHeight;
    const below = at.bottom + 4 + height <= box.bottom;
    menu.style.top = `${(below ? at.bottom + 4 : at.top - 4 - height) - box.top}px`;
    menu.style.right = `${Math.max(4, box.right - at.right)}px`;
    $("menu-edit").focus();
  }

  function closeMenu(returnFocus) {
    if (menuFor === null) return;
    $("message-menu").hidden = true;
    const trigger = menuTrigger;
    menuFor = null;
    menuTrigger = null;
    trigger.setAttribute("aria-expanded", "false");
    if (returnFocus && trigger.isConnected) trigger.focus();
  }

  on($("message-menu"), "keydown", (event) => {
    const items = [$("menu-edit"), $("menu-delete")];
    const at = items.indexOf(root.activeElement);
    let next = null;
    if (event.key === "ArrowDown") next = (at + 1) % items.length;
    else if (event.key === "ArrowUp") next = (at - 1 + items.length) % items.length;
    else if (event.key === "Home") next = 0;
    else if (event.key === "End") next = items.length - 1;
    else if (event.key === "Escape" || event.key === "Tab") {
      event.preventDefault();
      closeMenu(true);
      return;
    } else return;
    event.preventDefault();
    items[next].focus();
  });

  // A press anywhere else closes it.
  on(root, "pointerdown", (event) => {
    if (menuFor === null) return;
    const path = event.composedPath();
    if (!path.includes($("message-menu")) && !path.includes(menuTrigger)) closeMenu(false);
  });

  on($("menu-edit"), "click", () => {
    const id = menuFor;
    closeMenu(false);
    startEdit(id);
  });

  on($("menu-delete"), "click", async () => {
    const id = menuFor;
    closeMenu(true);
    await deleteMessage(id);
  });

  async function deleteMessage(id) {
    const message = state.shown.get(id);
    if (!message || message.deleted) return;
    const ok = await confirmAction("Delete this message? It is removed for both of you; a \u201cmessage deleted\u201d mark stays in its place.", "Delete");
    if (!ok) return;
    try {
      await api(`/message/${encodeURIComponent(id)}/`, { method: "DELETE" });
      onChanged({ ...message, body: "", edited: null, deleted: true });
    } catch (error) {
      if (error instanceof Stale) return;
      if (message.recipient === state.partner || message.user === state.partner) {
        showProblem(`Not deleted: ${error instanceof ApiError ? error.message : "something went wrong."}`, false);
      }
    }
  }

  // ---- editing: the composer holds the message being edited ----

  function markEditing() {
    for (const item of $("message-list").querySelectorAll("li.msg.editing")) item.classList.remove("editing");
    if (!state.editing) return;
    const item = $("message-list").querySelector(`li.msg[data-id="${state.editing.id}"]`);
    if (item) item.classList.add("editing");
  }

  function startEdit(id) {
    const message = state.shown.get(id);
    if (!message || message.deleted || message.user !== state.me || $("send-body").disabled) return;
    stopTyping();
    if (state.editing) state.editing.id = id;
    else state.editing = { id, draft: $("send-body").value };
    markEditing();
    clearProblem();
    const input = $("send-body");
    input.value = message.body;
    input.setAttribute("aria-describedby", "editing-text send-counter");
    $("editing-bar").hidden = false;
    $("send-button").textContent = "Save";
    drawComposer();
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  // Leaves editing; the text that was in the composer before comes back.
  function stopEdit() {
    if (!state.editing) return;
    const { draft } = state.editing;
    state.editing = null;
    markEditing();
    $("editing-bar").hidden = true;
    $("send-button").textContent = "Send";
    $("send-body").setAttribute("aria-describedby", "send-counter");
    $("send-body").value = draft;
    clearProblem();
    if (state.pending && state.pending.recipient === state.partner) showProblem(state.pending.problem, true);
    drawComposer();
  }

  async function saveEdit() {
    const editing = state.editing;
    const partner = state.partner;
    const body = $("send-body").value;
    const message = state.shown.get(editing.id);
    if (!body.trim()) {
      showProblem("A message cannot be empty: to remove it, choose Delete in its menu.", false);
      return;
    }
    if (!drawComposer()) {
      showProblem(`This message is ${messageLength(body) - state.maxChars} characters too long to save.`, false);
      return;
    }
    if (message && body.trim() === message.body) {
      stopEdit();
      return;
    }
    clearProblem();
    try {
      const edited = await api(`/message/${encodeURIComponent(editing.id)}/`, { method: "PATCH", json: { body } });
      if (state.editing === editing) stopEdit();
      onChanged(edited);
    } catch (error) {
      if (error instanceof Stale) return;
      // The new text stays in the composer: the problem says why it was not saved.
      if (state.editing === editing && state.partner === partner) {
        showProblem(`Not saved: ${error instanceof ApiError ? error.message : "something went wrong."}`, false);
      }
    }
  }

  on($("edit-cancel"), "click", () => {
    stopEdit();
    $("send-body").focus();
  });

  // ---- a question before something that cannot be undone ----

  let confirming = null;

  function confirmAction(question, action) {
    if (confirming) confirming.finish(false);
    const dialog = $("confirm");
    $("confirm-text").textContent = question;
    $("confirm-ok").textContent = action;
    const returnTo = root.activeElement;
    dialog.showModal();
    // The safe answer has the focus.
    $("confirm-cancel").focus();
    return new Promise((resolve) => {
      confirming = {
        finish(answer) {
          confirming = null;
          if (dialog.open) dialog.close();
          if (returnTo && returnTo.isConnected) returnTo.focus();
          resolve(answer);
        },
      };
    });
  }

  on($("confirm-ok"), "click", () => { if (confirming) confirming.finish(true); });
  on($("confirm-cancel"), "click", () => { if (confirming) confirming.finish(false); });
  // Escape (a close that a newer question has overtaken is not its answer).
  on($("confirm"), "close", () => { if (confirming && !$("confirm").open) confirming.finish(false); });

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
    const marking = (async () => {
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
    const owner = state;
    owner.marking = marking;
    marking.finally(() => {
      owner.marking = null;
      // Something newer may have arrived while the request was out.
      if (owner === state && state.partner === peer && state.newestFromPeer !== null && state.newestFromPeer > upTo) {
        maybeMarkRead();
      }
    });
  }

  on(window, "focus", maybeMarkRead);
  on(document, "visibilitychange", maybeMarkRead);
  on($("messages"), "scroll", () => {
    // The menu would no longer sit by its message.
    if (menuFor !== null) closeMenu($("message-menu").contains(root.activeElement));
    clearTimeout(scrollTimer);
    scrollTimer = setTimeout(maybeMarkRead, 100);
  });

  // ---- the composer ----

  $("send-body").placeholder = touch ? "Message" : "Message (Enter sends)";
  $("send-body").setAttribute("aria-label",
    touch ? "Message" : "Message (Enter sends, Shift+Enter for a new line)");

  // Grows with its text (up to the height the style sheet allows), and counts as the server
  // does once the text nears the limit; too long a text is never cut, only refused.
  function drawComposer() {
    const input = $("send-body");
    input.style.height = "";
    // Measured only while shown (a hidden box measures 0); redrawn when the form appears.
    if (input.getClientRects().length > 0) input.style.height = `${input.scrollHeight + 2}px`;
    const length = messageLength(input.value);
    const counter = $("send-counter");
    const over = length - state.maxChars;
    counter.hidden = length < state.maxChars * COUNTER_MARGIN;
    counter.classList.toggle("over", over > 0);
    counter.textContent = over > 0
      ? `${length} / ${state.maxChars} characters: ${over} too many to send`
      : `${length} / ${state.maxChars} characters`;
    input.setAttribute("aria-invalid", over > 0 ? "true" : "false");
    return over <= 0;
  }

  on($("send-body"), "input", () => {
    drawComposer();
    typing();
  });

  on($("send-body"), "keydown", (event) => {
    if (event.key === "Escape" && state.editing) {
      event.preventDefault();
      stopEdit();
      return;
    }
    // Up in an empty composer edits my last message, as in other chats.
    if (event.key === "ArrowUp" && !state.editing && $("send-body").value === ""
        && !event.shiftKey && !event.altKey && !event.ctrlKey && !event.metaKey) {
      const mine = [...state.shown.values()].filter((m) => m.user === state.me && !m.deleted);
      if (mine.length) {
        event.preventDefault();
        startEdit(Math.max(...mine.map((m) => m.id)));
      }
      return;
    }
    // On a touch screen Enter is a new line; the Send button sends.
    if (touch) return;
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("send-form").requestSubmit();
    }
  });

  function clearProblem() {
    $("send-error").textContent = "";
    $("send-retry").hidden = true;
    $("send-problem").hidden = true;
  }

  function showProblem(message, retry) {
    $("send-problem").hidden = false;
    $("send-error").textContent = message;
    $("send-retry").hidden = !retry;
  }

  async function deliver(attempt) {
    clearProblem();
    try {
      const message = await api("/message/", {
        json: { recipient: attempt.recipient, body: attempt.body },
        headers: { "Idempotency-Key": attempt.key },
      });
      if (state.pending === attempt) state.pending = null;
      if (state.drafts.get(attempt.recipient) === attempt.body) state.drafts.delete(attempt.recipient);
      // The text was put back after a failure: it is sent now.
      if (state.partner === attempt.recipient && $("send-body").value === attempt.body) {
        $("send-body").value = "";
        drawComposer();
      }
      onMessage(message, false);
    } catch (error) {
      if (error instanceof Stale) return;
      // The text is not lost: back in the composer (unless something new was typed) and
      // retried, on request, with the same key so the server stores it once.
      const retry = !(error instanceof ApiError) || error.status === 0 || error.status >= 500 || error.status === 429;
      state.pending = retry ? attempt : null;
      if (state.partner === attempt.recipient && $("send-body").value === "") {
        $("send-body").value = attempt.body;
        drawComposer();
      } else if (state.partner !== attempt.recipient && !state.drafts.get(attempt.recipient)) {
        state.drafts.set(attempt.recipient, attempt.body);
      }
      attempt.problem = `Not sent: ${error instanceof ApiError ? error.message : "something went wrong."}`;
      if (state.partner === attempt.recipient) showProblem(attempt.problem, retry);
    }
  }

  on($("send-form"), "submit", async (event) => {
    event.preventDefault();
    if (state.editing) { await saveEdit(); return; }
    const input = $("send-body");
    const body = input.value;
    if (!body.trim() || !state.partner || input.disabled) return;
    if (!drawComposer()) {
      showProblem(`This message is ${messageLength(body) - state.maxChars} characters too long to send.`, false);
      return;
    }
    const pending = state.pending;
    const attempt = pending && pending.recipient === state.partner && pending.body === body
      ? pending
      : { recipient: state.partner, body, key: newKey() };
    input.value = "";
    drawComposer();
    stopTyping();
    await deliver(attempt);
  });

  // ---- typing: "typing" at most every few seconds while the box has text, "stop" when it is
  // cleared or sent ----

  function sendFrame(frame) {
    const socket = state.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  function typing() {
    const peer = state.partner;
    if (!peer || peer === state.me || state.editing) return;
    if ($("send-body").value.trim() === "") { stopTyping(); return; }
    // The server relays typing only within a conversation that has a message, and counts
    // every frame against a small per-socket rate: none is spent where it would be dropped.
    if (state.shown.size === 0) return;
    const now = Date.now();
    if (state.typingTo === peer && now - state.typingSentAt < TYPING_EVERY_MS) return;
    if (state.typingTo !== null && state.typingTo !== peer) stopTyping();
    if (sendFrame({ type: "typing", to: peer })) {
      state.typingTo = peer;
      state.typingSentAt = now;
    }
  }

  function stopTyping() {
    if (state.typingTo === null) return;
    sendFrame({ type: "typing", to: state.typingTo, stop: true });
    state.typingTo = null;
    state.typingSentAt = 0;
  }

  // Someone types to me: shown until the frame's time runs out, "stop" comes, or their
  // message arrives.
  function onTyping(frame) {
    const from = frame.from;
    if (typeof from !== "string") return;
    const owner = state;
    clearTimeout(owner.typingFrom.get(from));
    const expires = Number(frame.expires_in_ms);
    if (expires > 0) {
      const timer = setTimeout(() => {
        if (owner.typingFrom.get(from) !== timer) return;
        owner.typingFrom.delete(from);
        if (owner === state) drawPartnerStatus();
      }, expires);
      owner.typingFrom.set(from, timer);
    } else {
      owner.typingFrom.delete(from);
    }
    drawPartnerStatus();
  }

  function endTyping(from) {
    if (!state.typingFrom.has(from)) return;
    clearTimeout(state.typingFrom.get(from));
    state.typingFrom.delete(from);
    drawPartnerStatus();
  }

  // ---- presence: a dot in the inbox, "online" or "last seen …" on top of a conversation ----

  function learnPresence(user, online, lastSeen) {
    if (typeof user !== "string" || typeof online !== "boolean") return;
    state.presence.set(user, { online, last_seen: lastSeen || null });
  }

  function onPresence(frame) {
    const entries = Array.isArray(frame.users) ? frame.users : [frame];
    for (const entry of entries) {
      learnPresence(entry.user, entry.online, entry.last_seen);
      // Gone offline: whatever they were typing is not coming.
      if (entry.online === false) endTyping(entry.user);
    }
    drawInbox();
    drawPartnerStatus();
  }

  // Typing first, then presence; nothing when the server keeps no presence.
  function drawPartnerStatus() {
    const status = $("partner-status");
    const peer = state.partner;
    let text = "";
    let title = "";
    let kind = "";
    if (peer && peer !== state.me) {
      const presence = state.presence.get(peer);
      if (state.typingFrom.has(peer)) {
        text = "typing…";
        kind = "typing";
      } else if (presence && presence.online) {
        text = "online";
        kind = "online";
      } else if (presence && presence.last_seen) {
        const date = new Date(presence.last_seen);
        text = `last seen ${lastSeenText(date)}`;
        title = date.toLocaleString();
      } else if (presence) {
        text = "offline";
      }
    }
    if (status.textContent !== text) status.textContent = text;
    status.title = title;
    status.className = `partner-status ${kind}`.trim();
    status.hidden = text === "";
  }

  const clock = setInterval(drawPartnerStatus, CLOCK_MS);
  cleanups.push(() => clearInterval(clock));

  // When the open conversation's peer is in no loaded inbox entry (opened from the URL or the
  // directory), their presence comes from the directory.
  async function lookUpPresence(peer) {
    if (peer === state.me || state.presence.has(peer)) return;
    const users = await api(`/user/?q=${encodeURIComponent(peer)}&limit=20`);
    for (const user of users) learnPresence(user.username, user.online, user.last_seen);
    drawPartnerStatus();
  }

  // ---- blocking ----

  function isBlocked(peer) {
    return peer !== null && state.blocked.has(peer.toLowerCase());
  }

  async function loadBlocks() {
    try {
      const list = await api("/block/");
      state.blocked = new Map(list.map((entry) => [entry.username.toLowerCase(), entry.username]));
      state.blocking = true;
    } catch (error) {
      if (error instanceof Stale) throw error;
      // A server without the routes: no block controls. Any other failure: tried again later.
      if (error instanceof ApiError && (error.status === 404 || error.status === 405)) state.blocking = false;
    }
    drawBlocked();
  }

  // The conversation's header button, the composer (closed while I block the peer), and the
  // settings panel's list.
  function drawBlocked() {
    const peer = state.partner;
    const button = $("block-button");
    button.hidden = !state.blocking || peer === null || peer === state.me;
    const blocked = isBlocked(peer);
    if (peer !== null) {
      button.textContent = blocked ? "Unblock" : "Block";
      button.setAttribute("aria-label", `${blocked ? "Unblock" : "Block"} ${peer}`);
    }
    $("blocked-note").hidden = !blocked;
    $("blocked-text").textContent = blocked
      ? `You blocked ${peer}: neither of you can send messages in this conversation until you unblock them. You can still read it.`
      : "";
    if (blocked && state.editing) stopEdit();
    $("send-body").disabled = blocked;
    $("send-button").disabled = blocked;
    drawBlockedList();
  }

  function drawBlockedList() {
    const list = $("blocked-list");
    list.replaceChildren();
    const names = [...state.blocked.values()].sort();
    for (const name of names) {
      const item = document.createElement("li");
      item.dataset.username = name;
      const label = document.createElement("bdi");
      label.textContent = name;
      const unblock = document.createElement("button");
      unblock.type = "button";
      unblock.className = "secondary";
      unblock.textContent = "Unblock";
      unblock.setAttribute("aria-label", `Unblock ${name}`);
      unblock.addEventListener("click", () => setBlocked(name, false, $("blocked-error")));
      item.append(label, unblock);
      list.append(item);
    }
    $("blocked-none").hidden = names.length > 0;
    $("blocked-title").parentElement.hidden = !state.blocking;
  }

  // PUT or DELETE /block/<name>; a failure is said in `problem` (or the conversation's).
  async function setBlocked(name, block, problem = null) {
    if (problem) problem.textContent = "";
    try {
      await api(`/block/${encodeURIComponent(name)}`, { method: block ? "PUT" : "DELETE" });
    } catch (error) {
      if (error instanceof Stale) return false;
      const message = `Could not ${block ? "block" : "unblock"} ${name}: ${error instanceof ApiError ? error.message : "something went wrong."}`;
      if (problem) problem.textContent = message;
      else showProblem(message, false);
      return false;
    }
    if (block) state.blocked.set(name.toLowerCase(), name);
    else state.blocked.delete(name.toLowerCase());
    if (!problem) clearProblem();
    drawBlocked();
    return true;
  }

  on($("block-button"), "click", async () => {
    const peer = state.partner;
    if (peer === null) return;
    if (isBlocked(peer)) {
      if (await setBlocked(peer, false)) $("send-body").focus();
      return;
    }
    const ok = await confirmAction(
      `Block ${peer}? Neither of you will be able to send messages to the other until you unblock them. You keep the conversation.`,
      "Block");
    if (ok && await setBlocked(peer, true) && state.partner === peer) $("unblock-button").focus();
  });

  on($("unblock-button"), "click", async () => {
    const peer = state.partner;
    if (peer !== null && await setBlocked(peer, false) && state.partner === peer) $("send-body").focus();
  });

  // ---- settings: blocked people, deleting the account ----

  on($("settings-button"), "click", () => {
    $("settings-me").textContent = state.me;
    $("delete-error").textContent = "";
    $("blocked-error").textContent = "";
    drawBlockedList();
    $("settings").showModal();
    $("settings-close").focus();
    // Fresh from the server (another tab may have changed it).
    if (state.blocking) loadBlocks().catch(() => {});
  });

  on($("settings-close"), "click", () => $("settings").close());

  on($("settings"), "close", () => {
    $("delete-password").value = "";
    if (state.me !== null && !$("app").hidden) $("settings-button").focus();
  });

  on($("delete-form"), "submit", async (event) => {
    event.preventDefault();
    const password = $("delete-password").value;
    if (!password) return;
    $("delete-error").textContent = "";
    const ok = await confirmAction(
      "Delete your account for good? Everything you sent becomes \u201cmessage deleted\u201d for the people you wrote to. This cannot be undone.",
      "Delete my account");
    if (!ok) return;
    const owner = state;
    // The server closes this account's sockets: that close is expected, not a lost session.
    owner.leaving = true;
    try {
      await api("/auth/account", { method: "DELETE", json: { password } });
    } catch (error) {
      owner.leaving = false;
      if (error instanceof Stale) return;
      showError($("delete-error"), error);
      if (owner === state && !state.socket) reconnectNow();
      $("delete-password").focus();
      return;
    }
    showAuth("Your account has been deleted.");
  });

  on($("send-retry"), "click", () => {
    if (state.pending) deliver(state.pending);
  });

  // ---- live updates ----

  function onMessage(message, live) {
    const peer = conversationOf(message);
    const fromPeer = message.user !== state.me;
    // Their message ends their typing.
    if (fromPeer) endTyping(message.user);
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
    if (live && isNews && fromPeer) {
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
      if (state.partner) {
        const partner = state.partner;
        state.partner = null;
        await openConversation(partner, { record: false });
      }
      return;
    }
    if (frame.type === "read") {
      onRead(frame);
    } else if (frame.type === "edit" || frame.type === "delete") {
      if (frame.data) onChanged(frame.data);
    } else if (frame.type === "typing") {
      onTyping(frame);
    } else if (frame.type === "presence") {
      onPresence(frame);
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

  function setConnection(text, live, banner) {
    $("connection").textContent = text;
    $("connection").classList.toggle("live", live);
    $("banner").hidden = banner === null;
    if (banner !== null) {
      $("banner-text").textContent = banner.text;
      $("retry-now").hidden = !banner.retry;
    }
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    const url = new URL("ws", base);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (state.lastEventId !== null) url.search = `?since=${state.lastEventId}`;
    const socket = new WebSocket(url.href);
    state.socket = socket;
    const owner = state;
    let queue = Promise.resolve();
    if ($("connection").textContent !== "live") setConnection("connecting…", false, null);
    socket.addEventListener("open", () => {
      if (owner.socket !== socket) return;
      owner.reconnectDelay = 500;
      setConnection("live", true, null);
      // Presence frames missed while the socket was down are never replayed: the inbox
      // carries who is online now.
      if (owner.connectedOnce) refreshInboxSoon();
      owner.connectedOnce = true;
    });
    socket.addEventListener("message", (event) => {
      if (owner.socket !== socket) return;
      let frame;
      try { frame = JSON.parse(event.data); } catch (_) { return; }
      queue = queue.then(() => (owner.socket === socket ? onFrame(frame) : null)).catch(() => {});
    });
    socket.addEventListener("close", (event) => {
      if (owner.socket !== socket) return;
      owner.socket = null;
      if (event.code === 4001) {
        // This page deletes the account: it shows the login itself once the server answers.
        if (owner.leaving) return;
        // The session ended (logged out elsewhere, or expired): reconnecting would be refused.
        showAuth("Your session ended. Please log in again.");
        return;
      }
      if (event.code === 1008) {
        // Too many open tabs: reconnecting would close another one, which would do the same.
        setConnection("closed", false, { text: "Live updates stopped: this account has too many open tabs. Close one, then retry.", retry: true });
        return;
      }
      if (!owner.me) return;
      const delay = owner.reconnectDelay;
      owner.reconnectDelay = Math.min(owner.reconnectDelay * 2, 10000);
      owner.reconnectTimer = setTimeout(() => { if (owner === state && !state.socket) connect(); }, delay);
      const seconds = Math.max(1, Math.round(delay / 1000));
      setConnection("reconnecting…", false, {
        text: `Not connected: new messages will not show up. Reconnecting in ${seconds} s…`,
        retry: true,
      });
    });
  }

  function closeSocket() {
    const socket = state.socket;
    state.socket = null;
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    if (socket) socket.close();
    setConnection("offline", false, null);
  }

  // Catch up on what was missed while the socket was down, then reconnect at once.
  function reconnectNow() {
    if (!state.me || state.socket) return;
    state.reconnectDelay = 500;
    connect();
  }

  on($("retry-now"), "click", reconnectNow);
  on(window, "online", reconnectNow);

  // ---- start ----

  // `focus`: after logging in here, the focus moves into the chat; a page that merely loads
  // with a session (maybe a host's page with fields of its own) keeps its focus.
  async function start(session, { focus = false } = {}) {
    reset(false);
    state.me = session.username;
    if (Number.isInteger(session.max_message_chars)) state.maxChars = session.max_message_chars;
    $("loading").hidden = true;
    $("auth").hidden = true;
    $("host-login").hidden = true;
    $("app").hidden = false;
    $("me").textContent = session.username;
    if (focus) $("user-search").focus();
    emit("chatcore-session", { username: session.username });
    // The position comes first: whatever happens after it is replayed on the socket, and
    // replays are harmless (counted messages are recognised by id, markers only move forward).
    await primeLastEventId();
    await loadInbox();
    await loadBlocks();
    connect();
    const peer = peerInUrl();
    if (peer !== null) await openConversation(peer, { record: false });
  }

  // The server, not this page, knows whether the session cookie is still good.
  (async () => {
    let session;
    try {
      session = await api("/auth/session");
    } catch (error) {
      if (error instanceof Stale) return;
      showAuth(error instanceof ApiError && error.status === 401 ? "" : error.message);
      return;
    }
    try {
      await start(session);
    } catch (error) {
      if (error instanceof Stale) return;
      if (!(error instanceof ApiError && error.status === 401)) showAuth(error.message);
    }
  })();

  return () => {
    epoch += 1;
    closeSocket();
    clearTimeout(refreshTimer);
    clearTimeout(searchTimer);
    clearTimeout(scrollTimer);
    for (const cleanup of cleanups) cleanup();
  };
}

/// The chat, as an element: see the top of this file.
export class ChatcoreApp extends HTMLElement {
  connectedCallback() {
    if (!this.shadowRoot) {
      const shadow = this.attachShadow({ mode: "open" });
      const template = document.createElement("template");
      template.innerHTML = MARKUP;
      shadow.append(template.content.cloneNode(true));
    }
    if (!this.unmount) this.unmount = mount(this);
  }

  disconnectedCallback() {
    if (this.unmount) this.unmount();
    this.unmount = null;
  }
}

if (!customElements.get("chatcore-app")) customElements.define("chatcore-app", ChatcoreApp);
