// Proxlab default theme: the student portal (/portal). No inline script anywhere (the page is served
// with a Content-Security-Policy that forbids it); everything hooks in from here.
//
// What it relies on (portal.html):
//   <meta name="csrf-token">                 the session's CSRF token (sent as X-CSRF-Token)
//   <article class="vm-card" data-key="{cluster}/{vmid}" data-api="/api/vm/{vmid}" data-query="?cluster=ID"
//            data-baseline="NAME or empty" data-template="0|1">
//     [data-f=name|state|ip|lock|stale|result|connect]   the parts updated in place
//     button[data-op=start|shutdown|stop|revert]       the operations
//     details.connect-menu[data-connect=URL]           the Connect menu (GET /api/vm/{vmid}/connect)
//   <p data-cluster-banner="{id}" data-cluster-name="...">  the stale banner of a cluster
//   <dialog id="revert-dialog">                       the revert confirmation
//
// Live updates: an EventSource on /api/events (already filtered to the user's VMs by the server):
//   guest {"type":"guest","guest":{cluster, vmid, name, state, lock, template, ip:{address}|null, stale}}
//   guest_removed {"type":"guest_removed","cluster","vmid"}
//   cluster {"type":"cluster","state":{id, name, status, reason, stale_since, ...}}
//   resync  the server dropped events for this page: reload it
// Operations: POST {api}/{op}{query} with X-CSRF-Token; the answer is the task's real result
// ({ok, exitstatus, message, guest} or {"error": {code, message}} with PVE's own words).
(function () {
  "use strict";

  var list = document.getElementById("portal-vms");
  var live = document.getElementById("live");
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : "";
  var dialog = document.getElementById("revert-dialog");

  var cards = {};
  var busy = {};
  // Live events seen per card: an operation's answer carries the guest as it was when its task ended,
  // which may be older than an event that overtook the answer (the IP found a moment later). The
  // answer is only applied when no event for that card arrived while the operation ran.
  var events = {};
  if (list) {
    var all = list.querySelectorAll(".vm-card[data-key]");
    for (var i = 0; i < all.length; i++) { cards[all[i].getAttribute("data-key")] = all[i]; }
  }

  // What a revert did and what comes next: back to the snapshot or moved to the class's newer base,
  // and a VM left stopped needs Start.
  function afterRevert(b) {
    var o = b.outcome || {};
    var words = "";
    if (o.outcome === "moved") {
      words = " It now runs on the class's newer base (version " + o.to + ").";
    } else if (o.outcome === "rolled_back" && o.snapshot && !b.snapshot) {
      words = " (back to “" + o.snapshot + "”)";
    }
    var state = b.guest && (b.guest.state || b.guest.status);
    if (state === "stopped") { words += " The VM is stopped: press Start to use it."; }
    return words;
  }

  var OP_LABEL = { start: "Start", shutdown: "Shut down", stop: "Stop", revert: "Revert" };
  var OP_RUNNING = { start: "Starting…", shutdown: "Shutting down…", stop: "Stopping…", revert: "Reverting…" };

  function field(card, name) { return card.querySelector('[data-f="' + name + '"]'); }

  function setText(el, text) {
    if (el && el.textContent !== text) { el.textContent = text; }
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function formatTime(secs) {
    var d = new Date(secs * 1000);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds()) + " UTC";
  }

  // The same rules as VmButtons::for_state in pages.rs.
  function buttonsFor(state, template, hasBaseline) {
    if (template) { return { start: false, shutdown: false, stop: false, revert: false }; }
    var unknown = ["running", "stopped", "paused", "hibernated"].indexOf(state) < 0;
    return {
      start: unknown || state === "stopped" || state === "paused" || state === "hibernated",
      shutdown: unknown || state === "running",
      stop: unknown || state === "running" || state === "paused",
      revert: hasBaseline
    };
  }

  // A lock Proxmox holds (backup, clone, migrate, …) stops every operation; `suspended` (hibernated) does not.
  function blockingLock(card) {
    var lock = card.getAttribute("data-lock") || "";
    return lock && lock !== "suspended" ? lock : "";
  }

  function applyButtons(card) {
    var key = card.getAttribute("data-key");
    var state = card.getAttribute("data-state") || (field(card, "state") || {}).textContent;
    var can = buttonsFor(state, card.getAttribute("data-template") === "1", card.getAttribute("data-baseline") !== "");
    var lock = blockingLock(card);
    var buttons = card.querySelectorAll("button[data-op]");
    for (var i = 0; i < buttons.length; i++) {
      var op = buttons[i].getAttribute("data-op");
      buttons[i].disabled = !!busy[key] || !can[op] || !!lock;
      if (lock) {
        buttons[i].title = "Locked by Proxmox (" + lock + "): wait until it has finished";
      } else if (op === "revert" && !can.revert) {
        buttons[i].title = "This VM has no baseline snapshot to revert to";
      } else {
        buttons[i].removeAttribute("title");
      }
      buttons[i].setAttribute("aria-busy", busy[key] === op ? "true" : "false");
    }
  }

  function setResult(card, text, kind) {
    var el = field(card, "result");
    if (!el) { return; }
    el.textContent = text;
    el.className = "vm-result" + (kind ? " " + kind : "");
  }

  // ---- live state ------------------------------------------------------------------------------

  function ipCell(el, g) {
    if (!el) { return; }
    var running = g.state === "running";
    var addr = g.ip && g.ip.address ? g.ip.address : "";
    var want = running && addr ? addr : (running ? "finding IP…" : "—");
    if (el.textContent === want) { return; }
    el.textContent = "";
    if (running && addr) {
      el.textContent = addr;
    } else {
      var s = document.createElement("span");
      s.className = running ? "pending" : "muted";
      s.textContent = want;
      el.appendChild(s);
    }
  }

  function patchGuest(g) {
    var key = g.cluster + "/" + g.vmid;
    var card = cards[key];
    if (!card) { return; }
    card.classList.remove("is-removed");
    setText(field(card, "name"), g.name);
    var badge = field(card, "state");
    if (badge) {
      setText(badge, g.state);
      badge.className = "badge state-" + g.state;
    }
    card.setAttribute("data-state", g.state);
    card.setAttribute("data-lock", g.lock || "");
    ipCell(field(card, "ip"), g);
    var lock = field(card, "lock");
    if (lock) {
      lock.hidden = !g.lock;
      setText(lock, g.lock ? "Locked by Proxmox: " + g.lock : "");
    }
    var stale = field(card, "stale");
    var isStale = g.stale !== null && g.stale !== undefined;
    var banner = document.querySelector('[data-cluster-banner="' + CSS.escape(g.cluster) + '"]');
    var clusterStale = banner && !banner.hidden;
    if (stale && !clusterStale) {
      stale.hidden = !isStale;
      setText(stale, isStale ? "last known state: " + g.stale : "");
    }
    card.classList.toggle("is-stale", isStale || !!clusterStale);
    applyButtons(card);
    refreshConnect(card, false);
  }

  function removeGuest(ev) {
    var card = cards[ev.cluster + "/" + ev.vmid];
    if (card) {
      card.classList.add("is-removed");
      setText(field(card, "state"), "removed");
      setResult(card, "This VM no longer exists in Proxmox.", "bad");
    }
  }

  function patchCluster(c) {
    var banner = document.querySelector('[data-cluster-banner="' + CSS.escape(c.id) + '"]');
    var stale = c.status === "stale" || c.status === "never";
    if (banner) {
      banner.hidden = !stale;
      setText(banner, stale
        ? "Cluster " + c.name + " is " + c.status + (c.stale_since ? " since " + formatTime(c.stale_since) : "") +
          (c.reason ? ": " + c.reason : "") + ". Your VMs show their last known state."
        : "");
    }
    Object.keys(cards).forEach(function (key) {
      var card = cards[key];
      if (card.getAttribute("data-cluster") !== c.id) { return; }
      var el = field(card, "stale");
      if (!el) { return; }
      if (stale) {
        el.hidden = false;
        setText(el, (c.stale_since ? "stale since " + formatTime(c.stale_since) : "last known state") +
          (c.reason ? ": " + c.reason : ""));
        card.classList.add("is-stale");
      } else if (el.textContent.indexOf("stale since") === 0 || el.textContent === "last known state") {
        el.hidden = true;
        setText(el, "");
        card.classList.remove("is-stale");
      }
    });
  }

  // ---- operations ------------------------------------------------------------------------------

  function run(card, op) {
    var key = card.getAttribute("data-key");
    if (busy[key]) { return; }
    busy[key] = op;
    applyButtons(card);
    setResult(card, OP_RUNNING[op] || "Working…", "working");
    var url = card.getAttribute("data-api") + "/" + op + card.getAttribute("data-query");
    var seenBefore = events[key] || 0;
    fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Accept": "application/json" }
    }).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (body) {
        return { status: resp.status, body: body };
      });
    }).then(function (r) {
      var b = r.body || {};
      if (r.status >= 200 && r.status < 300 && b.ok) {
        var text = b.message ? b.message
          : OP_LABEL[op] + ": done" + (b.exitstatus && b.exitstatus !== "OK" ? " (" + b.exitstatus + ")" : "") +
            (b.snapshot ? " (back to “" + b.snapshot + "”)" : "");
        if (op === "revert" && !b.message) { text += afterRevert(b); }
        setResult(card, text, "ok");
        if (b.guest && b.guest.vmid !== undefined && (events[key] || 0) === seenBefore) { patchGuest(b.guest); }
      } else if (r.status === 401) {
        setResult(card, "Your session has ended. Sign in again.", "bad");
        window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
      } else {
        var msg = b.error && b.error.message ? b.error.message : "HTTP " + r.status;
        setResult(card, OP_LABEL[op] + " failed: " + msg, "bad");
      }
    }).catch(function () {
      setResult(card, OP_LABEL[op] + ": the portal could not be reached. Check your network and try again.", "bad");
    }).then(function () {
      delete busy[key];
      applyButtons(card);
    });
  }

  var pendingRevert = null;

  function askRevert(card) {
    if (!dialog || typeof dialog.showModal !== "function") {
      if (window.confirm("Revert this VM to its baseline snapshot? Everything changed since then is lost.")) {
        run(card, "revert");
      }
      return;
    }
    pendingRevert = card;
    setText(dialog.querySelector('[data-f="name"]'), (field(card, "name") || {}).textContent || "");
    setText(dialog.querySelector('[data-f="snapshot"]'), card.getAttribute("data-baseline"));
    dialog.returnValue = "";
    dialog.showModal();
  }

  if (dialog) {
    dialog.addEventListener("close", function () {
      var card = pendingRevert;
      pendingRevert = null;
      if (card && dialog.returnValue === "confirm") { run(card, "revert"); }
    });
  }

  if (list) {
    list.addEventListener("click", function (e) {
      var btn = e.target.closest ? e.target.closest("button[data-op]") : null;
      if (!btn || btn.disabled) { return; }
      var card = btn.closest(".vm-card");
      var op = btn.getAttribute("data-op");
      if (op === "revert") { askRevert(card); } else { run(card, op); }
    });
  }

  // ---- Connect menu ----------------------------------------------------------------------------

  var connectTimers = {};

  function el(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) { n.className = cls; }
    if (text !== undefined && text !== null) { n.textContent = text; }
    return n;
  }

  function renderConnect(body, info) {
    body.textContent = "";
    var addr = info.address || {};
    var status = el("p", "connect-address");
    if (addr.state === "found") {
      status.appendChild(document.createTextNode("Address "));
      status.appendChild(el("code", null, addr.ip));
      var v = addr.verification;
      if (v && v.state) {
        var age = typeof v.age_secs === "number" ? " " + v.age_secs + " s ago" : "";
        status.appendChild(el("span", "connect-verify verify-" + v.state,
          " · " + (v.state === "checking" ? "checking…" : v.state + age)));
      }
    } else if (addr.state === "pending") {
      status.appendChild(el("span", "pending", "finding IP…"));
    } else {
      status.appendChild(el("span", "muted", "Start the VM to connect to it."));
    }
    body.appendChild(status);
    var ul = el("ul", "connect-list");
    var methods = (info.methods || []).slice().sort(function (a, b) {
      return (b.recommended ? 1 : 0) - (a.recommended ? 1 : 0);
    });
    methods.forEach(function (m) {
      var li = el("li", "connect-item" + (m.recommended ? " recommended" : ""));
      if (m.available) {
        var a = el("a", "connect-link", m.label);
        a.href = m.url;
        if (m.kind === "rdp") {
          a.setAttribute("download", "");
        } else {
          a.target = "_blank";
          a.rel = "noopener";
        }
        li.appendChild(a);
        if (m.recommended) { li.appendChild(el("span", "tag", "recommended")); }
        if (m.copy) { li.appendChild(el("code", "connect-copy", m.copy)); }
      } else {
        li.appendChild(el("span", "connect-off", m.label));
        if (m.reason) { li.appendChild(el("span", "hint", " — " + m.reason)); }
      }
      ul.appendChild(li);
    });
    body.appendChild(ul);
  }

  function refreshConnect(card, force) {
    var menu = card.querySelector("details.connect-menu");
    if (!menu || (!menu.open && !force)) { return; }
    var body = field(card, "connect");
    var key = card.getAttribute("data-key");
    fetch(menu.getAttribute("data-connect"), {
      credentials: "same-origin",
      headers: { "Accept": "application/json" }
    }).then(function (resp) {
      return resp.json().then(function (b) { return { status: resp.status, body: b }; });
    }).then(function (r) {
      if (r.status !== 200) {
        body.textContent = "";
        body.appendChild(el("p", "result-bad", (r.body.error && r.body.error.message) || "HTTP " + r.status));
        return;
      }
      renderConnect(body, r.body);
      // While the address is still being found (or checked), ask again shortly.
      clearTimeout(connectTimers[key]);
      var a = r.body.address || {};
      var checking = a.verification && a.verification.state === "checking";
      // The OS type (which decides RDP or SSH) is read in the background on the first call.
      if (menu.open && (a.state === "pending" || checking || r.body.os === "unknown")) {
        connectTimers[key] = setTimeout(function () { refreshConnect(card, false); }, 2000);
      }
    }).catch(function () {
      body.textContent = "";
      body.appendChild(el("p", "result-bad", "The portal could not be reached."));
    });
  }

  Object.keys(cards).forEach(function (key) {
    var card = cards[key];
    card.setAttribute("data-state", (field(card, "state") || {}).textContent || "");
    var menu = card.querySelector("details.connect-menu");
    if (menu) {
      menu.addEventListener("toggle", function () {
        if (menu.open) { refreshConnect(card, true); } else { clearTimeout(connectTimers[key]); }
      });
    }
  });

  // ---- event stream ----------------------------------------------------------------------------

  function parse(e) {
    try { return JSON.parse(e.data); } catch (err) { return null; }
  }

  if (window.EventSource) {
    var es = new EventSource("/api/events");
    if (live) { live.setAttribute("data-state", "connecting"); }
    es.onopen = function () { if (live) { live.setAttribute("data-state", "open"); } };
    es.onerror = function () { if (live) { live.setAttribute("data-state", "error"); } };
    es.addEventListener("guest", function (e) {
      var d = parse(e);
      if (d && d.guest) {
        var k = d.guest.cluster + "/" + d.guest.vmid;
        events[k] = (events[k] || 0) + 1;
        patchGuest(d.guest);
      }
    });
    es.addEventListener("guest_removed", function (e) {
      var d = parse(e);
      if (d) { removeGuest(d); }
    });
    es.addEventListener("cluster", function (e) {
      var d = parse(e);
      if (d && d.state) { patchCluster(d.state); }
    });
    es.addEventListener("resync", function () { window.location.reload(); });
  }
})();
