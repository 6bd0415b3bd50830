// Proxlab default theme: the admin pages (/admin/users, /admin/clusters, /admin/assignments). No inline
// script (CSP); every action is a fetch to the JSON API with the session's CSRF token.
//
// Hooks (see the admin templates):
//   form[data-api=URL][data-method=POST|PUT][data-after=reload|close|cluster-test]
//        sent as a JSON object of its named fields (empty fields left out; data-type="number" sent as a
//        number; fields marked data-local stay in the page); the answer shows in its output[data-f=result]
//   select[data-user-role=NAME]        PUT /api/users/NAME {role}
//   button[data-user-toggle=NAME]      PUT /api/users/NAME {disabled: !current}
//   button[data-user-password=NAME]    opens #password-dialog, which POSTs /api/users/NAME/password
//   button[data-user-limits=NAME]      opens #limits-dialog, which PUTs /api/teachers/NAME/limits
//                                      (empty fields: the site's default)
//   button[data-delete=URL]            DELETE URL after confirm(data-confirm)
//   button[data-post=URL]              POST URL (e.g. /api/sync/trigger)
//   button[data-switch=ID]             POST /api/clusters/switch {cluster: ID}
//   input[data-filter-table=ID]        hides rows of table#ID that do not contain the text
//   #cluster-form + #cluster-snippet   the proxlab.toml section follows the form's fields
(function () {
  "use strict";

  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : "";
  var pageResult = document.getElementById("admin-result");

  function call(method, url, body) {
    var opts = {
      method: method,
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Accept": "application/json" }
    };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    return fetch(url, opts).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (b) {
        return { ok: resp.ok, status: resp.status, body: b };
      });
    }, function () {
      return { ok: false, status: 0, body: { error: { message: "the portal could not be reached" } } };
    });
  }

  function errorText(r) {
    if (r.status === 401) { return "your session has ended: sign in again"; }
    return (r.body && r.body.error && r.body.error.message) || ("HTTP " + r.status);
  }

  function show(out, text, ok) {
    if (!out) { return; }
    out.textContent = text;
    out.className = "result " + (ok ? "result-ok" : "result-bad");
  }

  function reloadSoon(ms) { setTimeout(function () { window.location.reload(); }, ms); }

  function formBody(form) {
    var body = {};
    var els = form.elements;
    for (var i = 0; i < els.length; i++) {
      var e = els[i];
      if (!e.name || e.disabled || e.hasAttribute("data-local")) { continue; }
      if (e.type === "checkbox") { body[e.name] = e.checked; continue; }
      var v = e.value.trim();
      if (v === "") { continue; }
      body[e.name] = e.getAttribute("data-type") === "number" ? Number(v) : v;
    }
    return body;
  }

  // ---- forms -----------------------------------------------------------------------------------

  function clusterTestText(b) {
    if (!b.ok) { return "Connection failed: " + ((b.error && b.error.message) || "unknown error"); }
    var nodes = (b.nodes || []).map(function (n) { return n.node + " (" + n.status + ")"; }).join(", ");
    return "Connected: Proxmox VE " + b.version + ", nodes " + (nodes || "none") + ", " + b.guests + " guests visible to this token.";
  }

  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (!form.hasAttribute || !form.hasAttribute("data-api")) { return; }
    e.preventDefault();
    var out = form.querySelector('[data-f="result"]');
    var submit = form.querySelector('button[type="submit"]');
    if (submit) { submit.disabled = true; }
    show(out, "Working…", true);
    var after = form.getAttribute("data-after");
    call(form.getAttribute("data-method") || "POST", form.getAttribute("data-api"), formBody(form)).then(function (r) {
      if (submit) { submit.disabled = false; }
      if (after === "cluster-test") {
        show(out, r.ok ? clusterTestText(r.body) : errorText(r), r.ok && r.body.ok);
        return;
      }
      if (!r.ok) { show(out, errorText(r), false); return; }
      show(out, "Done.", true);
      if (after === "reload") { reloadSoon(300); }
      if (after === "close") {
        var dlg = form.closest("dialog");
        if (dlg) { dlg.close(); }
        form.reset();
        show(pageResult, "Password changed; the user's sessions have ended.", true);
      }
    });
  });

  // ---- users -----------------------------------------------------------------------------------

  function userUrl(name) { return "/api/users/" + encodeURIComponent(name); }

  document.addEventListener("change", function (e) {
    var sel = e.target;
    if (!sel.hasAttribute || !sel.hasAttribute("data-user-role")) { return; }
    var name = sel.getAttribute("data-user-role");
    var before = sel.getAttribute("data-current");
    sel.disabled = true;
    call("PUT", userUrl(name), { role: sel.value }).then(function (r) {
      sel.disabled = false;
      if (r.ok) {
        sel.setAttribute("data-current", sel.value);
        show(pageResult, name + " is now " + sel.value + (r.body.effective_role && r.body.effective_role !== sel.value
          ? " (in force: " + r.body.effective_role + ")" : "") + ".", true);
      } else {
        sel.value = before;
        show(pageResult, name + ": " + errorText(r), false);
      }
    });
  });

  var pwDialog = document.getElementById("password-dialog");

  document.addEventListener("click", function (e) {
    var btn = e.target.closest ? e.target.closest("button") : null;
    if (!btn) { return; }
    if (btn.hasAttribute("data-close")) {
      var d = btn.closest("dialog");
      if (d) { d.close(); }
      return;
    }
    if (btn.hasAttribute("data-user-toggle")) {
      var name = btn.getAttribute("data-user-toggle");
      var disable = btn.getAttribute("data-disabled") !== "1";
      btn.disabled = true;
      call("PUT", userUrl(name), { disabled: disable }).then(function (r) {
        btn.disabled = false;
        if (r.ok) { show(pageResult, name + (disable ? " is disabled; their sessions have ended." : " may sign in again."), true); reloadSoon(600); }
        else { show(pageResult, name + ": " + errorText(r), false); }
      });
      return;
    }
    if (btn.hasAttribute("data-user-password") && pwDialog) {
      var user = btn.getAttribute("data-user-password");
      var form = pwDialog.querySelector("form");
      form.setAttribute("data-api", userUrl(user) + "/password");
      pwDialog.querySelector('[data-f="user"]').textContent = user;
      pwDialog.querySelector('[data-f="username"]').value = user;
      show(form.querySelector('[data-f="result"]'), "", true);
      pwDialog.showModal();
      return;
    }
    var limitsDialog = document.getElementById("limits-dialog");
    if (btn.hasAttribute("data-user-limits") && limitsDialog) {
      var teacher = btn.getAttribute("data-user-limits");
      var lform = limitsDialog.querySelector("form");
      lform.setAttribute("data-api", "/api/teachers/" + encodeURIComponent(teacher) + "/limits");
      limitsDialog.querySelector('[data-f="user"]').textContent = teacher;
      lform.elements.classes.value = btn.getAttribute("data-classes") || "";
      lform.elements.vms.value = btn.getAttribute("data-vms") || "";
      show(lform.querySelector('[data-f="result"]'), "", true);
      limitsDialog.showModal();
      return;
    }
    if (btn.hasAttribute("data-delete")) {
      if (!window.confirm(btn.getAttribute("data-confirm") || "Remove it?")) { return; }
      btn.disabled = true;
      call("DELETE", btn.getAttribute("data-delete")).then(function (r) {
        btn.disabled = false;
        if (r.ok) { show(pageResult, "Removed.", true); reloadSoon(300); }
        else { show(pageResult, errorText(r), false); }
      });
      return;
    }
    if (btn.hasAttribute("data-post")) {
      btn.disabled = true;
      call("POST", btn.getAttribute("data-post"), {}).then(function (r) {
        btn.disabled = false;
        show(pageResult, r.ok ? "Sync started." : errorText(r), r.ok);
        if (r.ok && btn.getAttribute("data-after") === "reload-soon") { reloadSoon(2000); }
      });
      return;
    }
    if (btn.hasAttribute("data-switch")) {
      var id = btn.getAttribute("data-switch");
      btn.disabled = true;
      call("POST", "/api/clusters/switch", { cluster: id }).then(function (r) {
        btn.disabled = false;
        if (r.ok) { show(pageResult, id + " is now your active cluster.", true); reloadSoon(300); }
        else { show(pageResult, errorText(r), false); }
      });
    }
  });

  // ---- table filters ---------------------------------------------------------------------------

  var filters = document.querySelectorAll("input[data-filter-table]");
  Array.prototype.forEach.call(filters, function (input) {
    var table = document.getElementById(input.getAttribute("data-filter-table"));
    if (!table || !table.tBodies[0]) { return; }
    var timer = null;
    input.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        var q = input.value.trim().toLowerCase();
        var rows = table.tBodies[0].rows;
        for (var i = 0; i < rows.length; i++) {
          rows[i].hidden = q !== "" && rows[i].textContent.toLowerCase().indexOf(q) < 0;
        }
      }, 120);
    });
  });

  // ---- cluster snippet -------------------------------------------------------------------------

  var clusterForm = document.getElementById("cluster-form");
  var snippet = document.getElementById("cluster-snippet");

  function tomlString(s) {
    return '"' + s.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/[\u0000-\u001f]/g, "") + '"';
  }

  function updateSnippet() {
    var f = function (name) {
      var e = clusterForm.elements.namedItem(name);
      return e ? e.value.trim() : "";
    };
    var id = f("id") || "…";
    var lines = ["[[cluster]]", "id = " + tomlString(id)];
    if (f("name")) { lines.push("name = " + tomlString(f("name"))); }
    lines.push("url = " + tomlString(f("url") || "https://…:8006"));
    lines.push("token_id = " + tomlString(f("token_id") || "…"));
    lines.push("token_secret_file = " + tomlString("/etc/proxlab/" + id + ".token"));
    if (f("fingerprint")) { lines.push("fingerprint = " + tomlString(f("fingerprint"))); }
    snippet.textContent = lines.join("\n");
  }

  if (clusterForm && snippet) {
    clusterForm.addEventListener("input", updateSnippet);
    updateSnippet();
  }
})();
