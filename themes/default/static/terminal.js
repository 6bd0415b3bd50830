// Proxlab default theme: the SSH terminal page (templates/ssh.html), with xterm.js from
// /static/vendor (pinned by package-lock.json, copied by dev/build-assets).
//
// Protocol (see core/web/src/connect/ssh.rs): the page fetches a one-time connect token
// (POST data-token-path with the CSRF token), opens the WebSocket data-ws-path&token=…, sends
//   {"type":"hello","cols":C,"rows":R}   first (the PTY gets this size before any input is sent)
//   {"type":"resize","cols":C,"rows":R}  whenever the terminal is resized
// as text frames and the keystrokes as binary frames. Output arrives as binary frames (whole UTF-8
// characters), status as text JSON ({"type":"status"|"hostkey",...}). Close codes 4000–4009 carry a
// reason that is shown; a reconnect always asks for a new token and sends a new hello.
(function () {
  "use strict";
  var root = document.getElementById("terminal-page");
  if (!root || typeof window.Terminal !== "function") {
    var m = document.getElementById("conn-message");
    if (m) { m.textContent = "The terminal files are missing on the server (run dev/build-assets)."; }
    return;
  }
  var stateEl = document.getElementById("conn-state");
  var msgEl = document.getElementById("conn-message");
  var again = document.getElementById("conn-reconnect");
  var warn = document.getElementById("hostkey-warning");
  var encoder = new TextEncoder();

  var term = new window.Terminal({ cursorBlink: true, convertEol: false, scrollback: 5000,
    fontFamily: getComputedStyle(document.body).getPropertyValue("--mono") || "monospace" });
  var fit = window.FitAddon ? new window.FitAddon.FitAddon() : null;
  if (fit) { term.loadAddon(fit); }
  term.open(document.getElementById("terminal"));
  if (fit) { fit.fit(); }
  term.focus();

  var ws = null;

  function setState(state, text) {
    stateEl.setAttribute("data-state", state);
    stateEl.textContent = state;
    msgEl.textContent = text || "";
  }

  function send(obj) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      if (typeof obj === "string") { ws.send(encoder.encode(obj)); } else { ws.send(JSON.stringify(obj)); }
    }
  }

  term.onData(function (d) { send(d); });
  term.onResize(function (s) { send({ type: "resize", cols: s.cols, rows: s.rows }); });
  window.addEventListener("resize", function () { if (fit) { fit.fit(); } });

  function wsUrl(path, token) {
    var proto = location.protocol === "https:" ? "wss:" : "ws:";
    var sep = path.indexOf("?") >= 0 ? "&" : "?";
    return proto + "//" + location.host + path + sep + "token=" + encodeURIComponent(token);
  }

  function connect() {
    again.hidden = true;
    setState("connecting", "asking for a connect token");
    fetch(root.getAttribute("data-token-path"), {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": root.getAttribute("data-csrf") },
      body: JSON.stringify({ purpose: "ssh" })
    }).then(function (r) {
      if (!r.ok) { throw new Error("connect token refused (" + r.status + ")"); }
      return r.json();
    }).then(function (t) {
      ws = new WebSocket(wsUrl(root.getAttribute("data-ws-path"), t.token));
      ws.binaryType = "arraybuffer";
      ws.onopen = function () {
        setState("connecting", "connected to the portal");
        send({ type: "hello", cols: term.cols, rows: term.rows });
      };
      ws.onmessage = function (ev) {
        if (typeof ev.data !== "string") { term.write(new Uint8Array(ev.data)); return; }
        var msg; try { msg = JSON.parse(ev.data); } catch (e) { return; }
        if (msg.type === "status") { setState(msg.state, msg.message); }
        if (msg.type === "hostkey" && msg.status === "changed") {
          warn.hidden = false;
          warn.textContent = "The host key of this VM changed (was " + msg.previous + ", now " +
            msg.fingerprint + "). Only continue if the VM was reset or rebuilt.";
        }
      };
      ws.onclose = function (ev) {
        setState("closed", (ev.reason || "connection closed") + " (" + ev.code + ")");
        again.hidden = false;
        ws = null;
      };
    }).catch(function (e) {
      setState("error", e.message);
      again.hidden = false;
    });
  }

  again.addEventListener("click", function () { term.reset(); connect(); term.focus(); });
  connect();
})();
