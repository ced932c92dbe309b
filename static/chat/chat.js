// The chat page: conversations and replies over one WebSocket (/ws/chat/).
// Model output is untrusted: markdown is rendered by marked and sanitised by
// DOMPurify before it touches the DOM; highlight.js then colours the code blocks
// from their text (it never parses HTML), and images load only from this origin.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const state = { conversation: null, socket: null, replyEl: null, replyText: "", busy: false, outbox: [] };
  // The requests that start a reply (and make the page busy until it is done).
  const ASKS = new Set(["send", "regenerate", "edit"]);
  const MEDIA_ATTRS = ["src", "srcset", "poster", "background"];

  function sameOrigin(url) {
    try { return new URL(url, location.href).origin === location.origin; } catch (e) { return false; }
  }

  // Images (and any other media) from elsewhere would tell a third party who reads what.
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    for (const name of MEDIA_ATTRS) {
      const value = node.getAttribute && node.getAttribute(name);
      if (value === null || value === undefined) continue;
      const urls = name === "srcset" ? value.split(",").map((s) => s.trim().split(/\s+/)[0]) : [value];
      if (urls.every(sameOrigin)) continue;
      node.removeAttribute(name);
      if (node.tagName === "IMG") {
        node.classList.add("blocked");
        node.setAttribute("alt", "[image blocked: " + (node.getAttribute("alt") || "not from this site") + "]");
      }
    }
  });

  function renderMarkdown(el, text) {
    el.innerHTML = DOMPurify.sanitize(marked.parse(text || ""), { USE_PROFILES: { html: true }, FORBID_ATTR: ["style"] });
    for (const code of el.querySelectorAll("pre > code")) {
      if (window.hljs) hljs.highlightElement(code);
      const copy = document.createElement("button");
      copy.type = "button";
      copy.className = "copy";
      copy.textContent = gettext("Copy");
      copy.onclick = () => navigator.clipboard.writeText(code.textContent).then(() => {
        copy.textContent = gettext("Copied");
        setTimeout(() => { copy.textContent = gettext("Copy"); }, 1500);
      });
      code.parentElement.prepend(copy);
    }
  }

  function addMessage(role, content, status, error, id) {
    const el = document.createElement("div");
    el.className = "msg " + role + (status === "error" ? " failed" : "");
    if (id) el.dataset.id = id;
    const body = document.createElement("div");
    body.className = "body";
    if (role === "assistant") renderMarkdown(body, content); else body.textContent = content;
    el.appendChild(body);
    if (status === "stopped") badge(el, gettext("stopped"));
    if (status === "error") badge(el, error || gettext("failed"));
    if (role === "user") actions(el, [[gettext("Edit"), "edit", () => startEdit(el)]]);
    $("messages").appendChild(el);
    $("messages").scrollTop = $("messages").scrollHeight;
    return el;
  }

  function actions(el, buttons) {
    const bar = document.createElement("div");
    bar.className = "actions";
    for (const [label, name, onclick] of buttons) {
      const b = document.createElement("button");
      b.type = "button"; b.className = "link " + name; b.textContent = label; b.onclick = onclick;
      bar.appendChild(b);
    }
    el.appendChild(bar);
  }

  // Only the last reply can be asked again: earlier ones are followed by the rest.
  function markLastReply() {
    for (const old of $("messages").querySelectorAll(".msg.assistant .actions")) old.remove();
    const all = $("messages").querySelectorAll(".msg");
    const last = all[all.length - 1];
    if (last && last.classList.contains("assistant") && !last.dataset.streaming) {
      actions(last, [[gettext("Regenerate"), "regenerate", regenerate]]);
    }
  }

  function badge(el, text) {
    const b = document.createElement("span");
    b.className = "badge";
    b.textContent = text;
    el.appendChild(b);
  }

  function notice(text) {
    const p = document.createElement("p");
    p.className = "notice error";
    p.setAttribute("role", "alert");
    p.textContent = text;
    $("messages").appendChild(p);
  }

  function setBusy(busy) {
    state.busy = busy;
    $("stop").hidden = !busy;
    $("send").hidden = busy;
    document.body.classList.toggle("busy", busy);
  }

  function connected() { return state.socket !== null && state.socket.readyState === WebSocket.OPEN; }

  // What the user asks while the socket is (re)connecting waits in the outbox and goes
  // when it opens; `bubble` is the question shown on the page for a send.
  function send(msg, bubble) {
    if (connected()) state.socket.send(JSON.stringify(msg));
    else state.outbox.push({ msg, bubble });
  }

  function asking() { return state.outbox.some((q) => ASKS.has(q.msg.type)); }

  function stop() {
    if (connected()) { send({ type: "stop" }); return; }
    // Nothing runs on the server for this page: take back what has not gone yet,
    // and put an unsent question back in the input.
    for (const q of state.outbox.filter((q) => ASKS.has(q.msg.type))) {
      if (q.bubble) { q.bubble.remove(); $("input").value = q.msg.content; }
    }
    state.outbox = state.outbox.filter((q) => !ASKS.has(q.msg.type));
    interrupted();
  }

  // The socket went away: the server stops a reply whose socket closed and keeps
  // what it had, so the page says so and takes questions again.
  function interrupted() {
    if (state.replyEl) {
      delete state.replyEl.dataset.streaming;
      state.replyEl.classList.remove("waiting");
      badge(state.replyEl, gettext("stopped"));
      state.replyEl = null;
      markLastReply();
    }
    if (!asking()) setBusy(false);
  }

  // Everything after a message goes, on the page as on the server.
  function dropAfter(el) {
    while (el.nextElementSibling) el.nextElementSibling.remove();
  }

  function regenerate() {
    if (state.busy || !state.conversation) return;
    const replies = $("messages").querySelectorAll(".msg.assistant");
    const last = replies[replies.length - 1];
    if (last) { const before = last.previousElementSibling; last.remove(); if (before) dropAfter(before); }
    setBusy(true);
    send({ type: "regenerate", conversation: state.conversation, model_id: $("model").value });
  }

  function startEdit(el) {
    if (state.busy || !el.dataset.id || el.querySelector("form")) return;
    const body = el.querySelector(".body");
    const form = document.createElement("form");
    form.className = "edit";
    const area = document.createElement("textarea");
    area.value = body.textContent;
    area.rows = Math.min(8, area.value.split("\n").length + 1);
    const save = document.createElement("button");
    save.type = "submit"; save.textContent = gettext("Save and send");
    const cancel = document.createElement("button");
    cancel.type = "button"; cancel.textContent = gettext("Cancel");
    form.append(area, save, cancel);
    body.hidden = true;
    el.querySelector(".actions").hidden = true;
    el.appendChild(form);
    area.focus();
    const close = () => { form.remove(); body.hidden = false; el.querySelector(".actions").hidden = false; };
    cancel.onclick = close;
    area.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
      if (e.key === "Escape") { e.stopPropagation(); close(); }
    });
    form.onsubmit = (e) => {
      e.preventDefault();
      const text = area.value.trim();
      if (!text || state.busy) return;
      close();
      body.textContent = text;
      dropAfter(el);
      setBusy(true);
      send({ type: "edit", conversation: state.conversation, message: Number(el.dataset.id), content: text, model_id: $("model").value });
    };
  }

  function showConversations(list) {
    const ul = $("conversations");
    ul.textContent = "";
    for (const c of list) {
      const li = document.createElement("li");
      li.dataset.id = c.id;
      if (c.id === state.conversation) li.className = "active";
      const title = document.createElement("span");
      title.className = "title";
      title.textContent = c.title;
      title.title = c.title;
      title.onclick = () => { send({ type: "open", conversation: c.id }); closeSidebar(); };
      const rename = document.createElement("button");
      rename.textContent = "✎"; rename.title = gettext("Rename"); rename.type = "button";
      rename.onclick = () => { const t = prompt(gettext("Rename conversation"), c.title); if (t) send({ type: "rename", conversation: c.id, title: t }); };
      const del = document.createElement("button");
      del.textContent = "✕"; del.title = gettext("Delete"); del.type = "button";
      del.onclick = () => {
        if (!confirm(gettext("Delete this conversation?"))) return;
        send({ type: "delete", conversation: c.id });
        if (c.id === state.conversation) newChat();
      };
      li.append(title, rename, del);
      ul.appendChild(li);
    }
    filterConversations();
  }

  function filterConversations() {
    const words = $("search").value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const li of $("conversations").children) {
      const title = li.querySelector(".title").textContent.toLowerCase();
      li.hidden = !words.every((w) => title.includes(w));
      shown += li.hidden ? 0 : 1;
    }
    $("no-match").hidden = shown > 0 || !words.length;
  }

  function openSidebar() {
    document.body.classList.add("show-sidebar");
    $("toggle-sidebar").setAttribute("aria-expanded", "true");
    $("toggle-sidebar").textContent = "✕";
    $("scrim").hidden = false;
  }

  function closeSidebar() {
    document.body.classList.remove("show-sidebar");
    $("toggle-sidebar").setAttribute("aria-expanded", "false");
    $("toggle-sidebar").textContent = "☰";
    $("scrim").hidden = true;
  }

  function newChat() {
    state.conversation = null;
    $("messages").textContent = "";
    $("system-prompt").value = "";
    $("system-prompt").disabled = false;
    for (const li of $("conversations").children) li.className = "";
    closeSidebar();
    $("input").focus();
  }

  function showQuota(quota) {
    if (!quota) { $("quota").textContent = ""; return; }
    const parts = [];
    if (quota.requests) parts.push(interpolate(gettext("%(remaining)s/%(limit)s requests left (resets in %(reset)s)"), quota.requests, true));
    if (quota.tokens) parts.push(interpolate(gettext("%(remaining)s/%(limit)s tokens left"), quota.tokens, true));
    $("quota").textContent = parts.join(" · ");
  }

  function onMessage(event) {
    const msg = JSON.parse(event.data);
    if (msg.type === "conversations") showConversations(msg.conversations);
    else if (msg.type === "conversation") {
      state.conversation = msg.id;
      $("messages").textContent = "";
      $("system-prompt").value = msg.system_prompt || "";
      $("system-prompt").disabled = true;
      if (msg.model_id && $("model").querySelector('option[value="' + msg.model_id + '"]')) $("model").value = String(msg.model_id);
      for (const m of msg.messages) addMessage(m.role, m.content, m.status, m.error, m.id);
      markLastReply();
      for (const li of $("conversations").children) li.className = Number(li.dataset.id) === msg.id ? "active" : "";
    } else if (msg.type === "started") {
      state.conversation = msg.conversation;
      $("system-prompt").disabled = true;
      const asked = [...$("messages").querySelectorAll(".msg.user")].pop();
      if (asked && !asked.dataset.id) asked.dataset.id = msg.user_message;
      markLastReply();
      state.replyText = "";
      state.replyEl = addMessage("assistant", "", "streaming");
      state.replyEl.dataset.streaming = "yes";
    } else if (msg.type === "status" && state.replyEl) {
      // The model's instance is starting: words instead of an empty bubble.
      state.replyEl.querySelector(".body").textContent = msg.message;
      state.replyEl.classList.add("waiting");
    } else if (msg.type === "delta" && state.replyEl) {
      state.replyEl.classList.remove("waiting");
      state.replyText += msg.content;
      renderMarkdown(state.replyEl.querySelector(".body"), state.replyText);
      $("messages").scrollTop = $("messages").scrollHeight;
    } else if (msg.type === "done") {
      if (state.replyEl) {
        delete state.replyEl.dataset.streaming;
        state.replyEl.dataset.id = msg.message;
        if (state.replyEl.classList.contains("waiting")) {
          state.replyEl.classList.remove("waiting");
          state.replyEl.querySelector(".body").textContent = "";
        }
        if (msg.status === "stopped") badge(state.replyEl, gettext("stopped"));
        if (msg.status === "error") { state.replyEl.classList.add("failed"); badge(state.replyEl, msg.error); }
      }
      state.replyEl = null;
      showQuota(msg.quota);
      setBusy(false);
      markLastReply();
    } else if (msg.type === "error") {
      notice(msg.message);
      setBusy(false);
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(scheme + "://" + location.host + "/ws/chat/");
    socket.onmessage = onMessage;
    socket.onopen = () => {
      const queued = state.outbox;
      state.outbox = [];
      send({ type: "list" });
      // Reopening shows a reply cut off by a drop as the server kept it; not when a
      // question waits to go, since the reopened page would no longer show it.
      if (state.conversation && !queued.some((q) => ASKS.has(q.msg.type))) {
        send({ type: "open", conversation: state.conversation });
      }
      for (const q of queued) send(q.msg);
    };
    socket.onclose = (e) => {
      if (e.code === 4401) { location.href = "/accounts/login/?next=/chat/"; return; }
      interrupted();
      setTimeout(connect, 1000);
    };
    state.socket = socket;
  }

  function submit() {
    const text = $("input").value.trim();
    if (!text || state.busy) return;
    const bubble = addMessage("user", text);
    $("input").value = "";
    setBusy(true);
    send({ type: "send", conversation: state.conversation, model_id: $("model").value, content: text, system_prompt: $("system-prompt").value }, bubble);
  }

  function typing(target) {
    return target.closest && target.closest("input, textarea, select, [contenteditable]");
  }

  function onKey(e) {
    const mod = e.ctrlKey || e.metaKey;
    if (mod && e.shiftKey && (e.key === "O" || e.key === "o")) { e.preventDefault(); newChat(); return; }
    if (e.key === "Escape") {
      if ($("shortcuts").open) return; // the dialog closes itself
      if (state.busy) { stop(); return; }
      if (document.body.classList.contains("show-sidebar")) closeSidebar();
      return;
    }
    if (typing(e.target) || mod || e.altKey) return;
    if (e.key === "?") { e.preventDefault(); $("shortcuts").showModal(); }
    else if (e.key === "/") { e.preventDefault(); openSidebar(); $("search").focus(); }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("composer").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
    $("input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); submit(); } });
    $("stop").addEventListener("click", stop);
    $("new-chat").addEventListener("click", newChat);
    $("toggle-sidebar").addEventListener("click", () => (document.body.classList.contains("show-sidebar") ? closeSidebar() : openSidebar()));
    $("scrim").addEventListener("click", closeSidebar);
    $("search").addEventListener("input", filterConversations);
    $("show-shortcuts").addEventListener("click", () => $("shortcuts").showModal());
    document.addEventListener("keydown", onKey);
    connect();
  });
})();
