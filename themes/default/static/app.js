// Proxlab default theme: live updates and the guest filter. No inline script anywhere (the pages are
// served with a Content-Security-Policy that forbids it); everything hooks in from here.
//
// Live updates: an EventSource on /api/events receives inventory events
//   guest         {"type":"guest","guest":{cluster, vmid, name, node, type, state, lock, template, ip:{address}|null, stale}}
//   guest_removed {"type":"guest_removed","cluster":"...","vmid":123}
//   cluster       {"type":"cluster","state":{id, name, status, reason, stale_since, guests, running, with_ip, templates, ...}}
//   resync        the server dropped events for this client: reload the page
// and patches the rows and cards of the current page in place.
(function () {
  "use strict";

  var body = document.body;
  var page = body.getAttribute("data-page");
  var live = document.getElementById("live");

  function setLive(state) {
    if (live) { live.setAttribute("data-state", state); }
  }

  function setText(el, text) {
    if (el && el.textContent !== text) { el.textContent = text; }
  }

  function flash(el) {
    el.classList.remove("is-changed");
    void el.offsetWidth; // restart the animation
    el.classList.add("is-changed");
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function formatTime(secs) {
    var d = new Date(secs * 1000);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds()) + " UTC";
  }

  // ---- guest table (/vms) ----------------------------------------------------------------------

  var table = document.getElementById("vms");
  var rows = {};
  if (table) {
    var trs = table.tBodies[0].rows;
    for (var i = 0; i < trs.length; i++) {
      var key = trs[i].getAttribute("data-key");
      if (key) { rows[key] = trs[i]; }
    }
  }

  function field(row, name) { return row.querySelector('[data-f="' + name + '"]'); }

  function stateLabel(g) { return g.state + (g.lock ? " (" + g.lock + ")" : ""); }

  function staleCell(cell, reason) {
    cell.textContent = "";
    if (reason !== null && reason !== undefined) {
      var s = document.createElement("span");
      s.className = "stale";
      s.title = reason || "last known state";
      s.textContent = "stale";
      cell.appendChild(s);
    }
  }

  function cell(tr, text, cls, f) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    if (f) { td.setAttribute("data-f", f); }
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  function buildRow(g) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-key", g.cluster + "/" + g.vmid);
    tr.setAttribute("data-cluster", g.cluster);
    var name = cell(tr, g.name, null, "name");
    if (g.template) {
      var t = document.createElement("span");
      t.className = "tag";
      t.textContent = "template";
      name.appendChild(document.createTextNode(" "));
      name.appendChild(t);
    }
    cell(tr, String(g.vmid), "num");
    cell(tr, g.cluster);
    cell(tr, g.node, null, "node");
    cell(tr, g.type);
    var st = document.createElement("td");
    var badge = document.createElement("span");
    badge.setAttribute("data-f", "state");
    st.appendChild(badge);
    tr.appendChild(st);
    cell(tr, "", "mono", "ip");
    cell(tr, "", null, "stale");
    return tr;
  }

  function patchGuest(g) {
    if (!table) { return; }
    var key = g.cluster + "/" + g.vmid;
    var row = rows[key];
    if (!row) {
      var only = table.getAttribute("data-cluster-filter");
      if (only && only !== g.cluster) { return; }
      var empty = table.querySelector("td.empty");
      if (empty) { empty.parentNode.parentNode.removeChild(empty.parentNode); }
      row = buildRow(g);
      table.tBodies[0].appendChild(row);
      rows[key] = row;
    }
    row.classList.remove("is-removed");
    var nameCell = field(row, "name");
    if (nameCell && nameCell.firstChild && nameCell.firstChild.nodeType === 3) {
      if (nameCell.firstChild.nodeValue !== g.name) { nameCell.firstChild.nodeValue = g.name; }
    }
    setText(field(row, "node"), g.node);
    var badge = field(row, "state");
    if (badge) {
      setText(badge, stateLabel(g));
      badge.className = "badge state-" + g.state;
    }
    setText(field(row, "ip"), g.ip && g.ip.address ? g.ip.address : "");
    staleCell(field(row, "stale"), g.stale);
    row.classList.toggle("is-stale", g.stale !== null && g.stale !== undefined);
    flash(row);
    applyFilter();
  }

  function removeGuest(ev) {
    var row = rows[ev.cluster + "/" + ev.vmid];
    if (row) {
      row.classList.add("is-removed");
      setText(field(row, "state"), "removed");
    }
  }

  // ---- overview cards (/) ----------------------------------------------------------------------

  function patchCluster(c) {
    var card = document.querySelector('.card[data-cluster="' + CSS.escape(c.id) + '"]');
    if (card) {
      var badge = card.querySelector('[data-f="status"]');
      if (badge) { setText(badge, c.status); badge.className = "badge status-" + c.status; }
      ["guests", "running", "with_ip", "templates"].forEach(function (k) {
        setText(card.querySelector('[data-f="' + k + '"]'), String(c[k]));
      });
      var note = card.querySelector('[data-f="note"]');
      var stale = c.status === "stale" || c.status === "never";
      if (note) {
        var text;
        if (stale && c.stale_since) {
          text = "Stale since " + formatTime(c.stale_since) + (c.reason ? ": " + c.reason : "");
        } else if (c.reason) {
          text = c.reason;
        } else if (c.last_ok_at) {
          text = "Last sync " + formatTime(c.last_ok_at);
        } else {
          text = "No sync yet";
        }
        setText(note, text);
      }
      card.setAttribute("data-stale", stale ? "1" : "0");
      flash(card);
      recountTotals();
    }
  }

  function recountTotals() {
    var cards = document.querySelectorAll(".card[data-cluster]");
    var sums = { guests: 0, running: 0, with_ip: 0, templates: 0, stale_clusters: 0 };
    for (var i = 0; i < cards.length; i++) {
      ["guests", "running", "with_ip", "templates"].forEach(function (k) {
        var el = cards[i].querySelector('[data-f="' + k + '"]');
        sums[k] += el ? parseInt(el.textContent, 10) || 0 : 0;
      });
      var b = cards[i].querySelector('[data-f="status"]');
      if (b && (b.textContent === "stale" || b.textContent === "never")) { sums.stale_clusters += 1; }
    }
    Object.keys(sums).forEach(function (k) {
      setText(document.querySelector('[data-total="' + k + '"]'), String(sums[k]));
    });
  }

  // ---- filter (/vms) ---------------------------------------------------------------------------

  var filter = document.getElementById("filter");
  var filterCount = document.getElementById("filter-count");
  var filterTimer = null;

  function applyFilter() {
    if (!filter || !table) { return; }
    var q = filter.value.trim().toLowerCase();
    var shown = 0, total = 0;
    Object.keys(rows).forEach(function (k) {
      var r = rows[k];
      total += 1;
      var hide = q !== "" && r.textContent.toLowerCase().indexOf(q) < 0;
      if (r.hidden !== hide) { r.hidden = hide; }
      if (!hide) { shown += 1; }
    });
    setText(filterCount, q === "" ? "" : shown + " of " + total + " shown");
  }

  if (filter) {
    filter.addEventListener("input", function () {
      clearTimeout(filterTimer);
      filterTimer = setTimeout(applyFilter, 120);
    });
  }

  // ---- event streams ---------------------------------------------------------------------------

  function parse(e) {
    try { return JSON.parse(e.data); } catch (err) { return null; }
  }

  if (window.EventSource && (page === "index" || page === "vms")) {
    var es = new EventSource("/api/events");
    setLive("connecting");
    es.onopen = function () { setLive("open"); };
    es.onerror = function () { setLive("error"); };
    es.addEventListener("guest", function (e) {
      var d = parse(e);
      if (d && d.guest) { patchGuest(d.guest); }
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

  // Theme live reload (only when the server enables it): reload the page after a successful theme rebuild.
  var reloadUrl = body.getAttribute("data-live-reload");
  if (window.EventSource && reloadUrl) {
    var rs = new EventSource(reloadUrl);
    rs.addEventListener("reload", function (e) {
      var d = parse(e);
      if (d && d.ok) { window.location.reload(); }
    });
  }
})();
