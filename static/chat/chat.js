// The chat page: conversations and replies over one WebSocket (/ws/chat/).
// Model output is untrusted: markdown is rendered by marked and sanitised by
// DOMPurify before it touches the DOM.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const state = { conversation: null, socket: null, replyEl: null, replyText: "", busy: false };

  function renderMarkdown(el, text) {
    el.innerHTML = DOMPurify.sanitize(marked.parse(text || ""), { USE_PROFILES: { html: true } });
  }

  function addMessage(role, content, status, error) {
    const el = document.createElement("div");
    el.className = "msg " + role + (status === "error" ? " failed" : "");
    const body = document.createElement("div");
    body.className = "body";
    if (role === "assistant") renderMarkdown(body, content); else body.textContent = content;
    el.appendChild(body);
    if (status === "stopped") badge(el, "stopped");
    if (status === "error") badge(el, error || "failed");
    $("messages").appendChild(el);
    $("messages").scrollTop = $("messages").scrollHeight;
    return el;
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
  }

  function send(msg) { if (state.socket && state.socket.readyState === 1) state.socket.send(JSON.stringify(msg)); }

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
      title.onclick = () => { send({ type: "open", conversation: c.id }); document.body.classList.remove("show-sidebar"); };
      const rename = document.createElement("button");
      rename.textContent = "✎"; rename.title = "Rename";
      rename.onclick = () => { const t = prompt("Rename conversation", c.title); if (t) send({ type: "rename", conversation: c.id, title: t }); };
      const del = document.createElement("button");
      del.textContent = "✕"; del.title = "Delete";
      del.onclick = () => {
        if (!confirm("Delete this conversation?")) return;
        send({ type: "delete", conversation: c.id });
        if (c.id === state.conversation) newChat();
      };
      li.append(title, rename, del);
      ul.appendChild(li);
    }
  }

  function newChat() {
    state.conversation = null;
    $("messages").textContent = "";
    $("system-prompt").value = "";
    $("system-prompt").disabled = false;
    for (const li of $("conversations").children) li.className = "";
  }

  function showQuota(quota) {
    if (!quota) { $("quota").textContent = ""; return; }
    const parts = [];
    if (quota.requests) parts.push(quota.requests.remaining + "/" + quota.requests.limit + " requests left (resets in " + quota.requests.reset + ")");
    if (quota.tokens) parts.push(quota.tokens.remaining + "/" + quota.tokens.limit + " tokens left");
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
      if (msg.model_id) $("model").value = String(msg.model_id);
      for (const m of msg.messages) addMessage(m.role, m.content, m.status, m.error);
      for (const li of $("conversations").children) li.className = Number(li.dataset.id) === msg.id ? "active" : "";
    } else if (msg.type === "started") {
      state.conversation = msg.conversation;
      $("system-prompt").disabled = true;
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
        if (state.replyEl.classList.contains("waiting")) {
          state.replyEl.classList.remove("waiting");
          state.replyEl.querySelector(".body").textContent = "";
        }
        if (msg.status === "stopped") badge(state.replyEl, "stopped");
        if (msg.status === "error") { state.replyEl.classList.add("failed"); badge(state.replyEl, msg.error); }
      }
      state.replyEl = null;
      showQuota(msg.quota);
      setBusy(false);
    } else if (msg.type === "error") {
      notice(msg.message);
      setBusy(false);
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(scheme + "://" + location.host + "/ws/chat/");
    socket.onmessage = onMessage;
    socket.onopen = () => { send({ type: "list" }); if (state.conversation) send({ type: "open", conversation: state.conversation }); };
    socket.onclose = (e) => {
      if (e.code === 4401) { location.href = "/accounts/login/?next=/chat/"; return; }
      setTimeout(connect, 1000);
    };
    state.socket = socket;
  }

  function submit() {
    const text = $("input").value.trim();
    if (!text || state.busy) return;
    addMessage("user", text);
    $("input").value = "";
    setBusy(true);
    send({ type: "send", conversation: state.conversation, model_id: $("model").value, content: text, system_prompt: $("system-prompt").value });
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("composer").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
    $("input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); submit(); } });
    $("stop").addEventListener("click", () => send({ type: "stop" }));
    $("new-chat").addEventListener("click", newChat);
    $("toggle-sidebar").addEventListener("click", () => document.body.classList.toggle("show-sidebar"));
    connect();
  });
})();
