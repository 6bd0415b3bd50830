// Proxlab default theme: the teacher's class pages (/classes and /classes/{id}). No inline script
// anywhere (the pages are served with a Content-Security-Policy that forbids it).
//
// What it relies on:
//   <meta name="csrf-token">                        the session's CSRF token (sent as X-CSRF-Token)
//   /classes:       <form id="new-class" data-api="/api/classes"> with fields name, cluster,
//                   template_vmid, workflow, pool_size, node, storage, description, self_registration
//                   and [data-f=result]; on success the browser goes to /classes/{id}.
//                   <form id="register-template" data-api="/api/templates"> (admins) with cluster, vmid,
//                   visibility (all|teachers|admins), teachers and [data-f=result]; on success the page
//                   reloads with the template listed. button[data-action=unregister-template][data-cluster]
//                   [data-vmid] in table#templates takes a template out of the catalogue.
//   /classes/{id}:  <section id="class-page" data-class="ID" data-api="/api/classes/ID" data-job="JOB or empty">
//                   table#class-vms rows <tr data-key="{cluster}/{vmid}"> with [data-f=name|state|ip|user|node]
//                   [data-teacher-state][data-key]   the teacher VM's state badge
//                   p#job-progress with <progress data-f=bar> and [data-f=text]; table#class-jobs rows [data-job]
//                   button[data-action=teacher][data-op=start|shutdown|stop], [data-action=publish|invite|copy|
//                   revoke|delete], select#invite-ttl, p#invite-new with input#invite-url,
//                   dialog#publish-dialog (radio name=mode), dialog#delete-dialog with input#delete-confirm,
//                   output#class-result
// Live updates: /api/events (guest events: state, IP) and /api/classes/{id}/events (job progress:
// snapshot {vms, running_jobs}, job, step, progress, resync). When a job of the class ends the page reloads to show it.
(function () {
  "use strict";

  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : "";
  var live = document.getElementById("live");

  function setLive(state) { if (live) { live.setAttribute("data-state", state); } }

  function call(method, url, body) {
    var opts = { method: method, credentials: "same-origin", headers: { "X-CSRF-Token": csrf, "Accept": "application/json" } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    return fetch(url, opts).then(function (r) {
      return r.text().then(function (t) {
        var data = null;
        try { data = t ? JSON.parse(t) : null; } catch (e) { data = null; }
        if (!r.ok) {
          var msg = data && data.error && data.error.message ? data.error.message : ("HTTP " + r.status);
          throw new Error(msg);
        }
        return data;
      });
    });
  }

  function show(el, text, ok) {
    if (!el) { return; }
    el.textContent = text;
    el.className = "result " + (ok ? "result-ok" : "result-bad");
  }

  // ---- /classes: the new class form ----------------------------------------------------------------

  var form = document.getElementById("new-class");
  if (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var out = form.querySelector('[data-f="result"]');
      var body = { name: form.elements.name.value.trim() };
      var cluster = form.elements.cluster ? form.elements.cluster.value : "";
      if (cluster) { body.cluster = cluster; }
      body.template_vmid = parseInt(form.elements.template_vmid.value, 10);
      body.workflow = form.elements.workflow.value;
      body.pool_size = parseInt(form.elements.pool_size.value, 10) || 0;
      ["node", "storage", "description"].forEach(function (k) {
        var v = form.elements[k] ? form.elements[k].value.trim() : "";
        if (v) { body[k] = v; }
      });
      body.self_registration = !!(form.elements.self_registration && form.elements.self_registration.checked);
      var button = form.querySelector('button[type="submit"]');
      if (button) { button.disabled = true; }
      show(out, "Creating…", true);
      call("POST", form.getAttribute("data-api"), body).then(function (data) {
        window.location.href = "/classes/" + encodeURIComponent(data["class"].id);
      }).catch(function (e) {
        show(out, e.message, false);
        if (button) { button.disabled = false; }
      });
    });
  }

  // ---- /classes: a notice left by the page before (a class deleted) ---------------------------------

  var list = document.getElementById("classes");
  if (list) {
    var notice = null;
    try { notice = window.sessionStorage.getItem("proxlab-notice"); window.sessionStorage.removeItem("proxlab-notice"); } catch (x) { /* private mode */ }
    if (notice) {
      var p = document.createElement("p");
      p.className = "banner ok";
      p.id = "classes-notice";
      p.setAttribute("role", "status");
      p.textContent = notice;
      list.parentNode.insertBefore(p, list);
    }
  }

  // ---- /classes: registering a template (admins) ---------------------------------------------------

  var tform = document.getElementById("register-template");
  if (tform) {
    tform.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var out = tform.querySelector('[data-f="result"]');
      var body = { vmid: parseInt(tform.elements.vmid.value, 10) };
      if (tform.elements.cluster && tform.elements.cluster.value) { body.cluster = tform.elements.cluster.value; }
      if (tform.elements.visibility) { body.visibility = tform.elements.visibility.value; }
      if (body.visibility === "teachers" && tform.elements.teachers) {
        body.teachers = teacherList(tform.elements.teachers.value);
      }
      var button = tform.querySelector('button[type="submit"]');
      if (button) { button.disabled = true; }
      show(out, "Reading the template…", true);
      call("POST", tform.getAttribute("data-api"), body).then(function () {
        window.location.reload();
      }).catch(function (e) {
        show(out, e.message, false);
        if (button) { button.disabled = false; }
      });
    });
  }

  function teacherList(text) {
    return text.split(",").map(function (t) { return t.trim(); }).filter(function (t) { return t; });
  }

  // The page's words for a catalogue record's visibility ({kind: all_teachers|teachers|admins_only, names}).
  function openTo(record) {
    var v = record.visibility || {};
    if (v.kind === "all_teachers") { return { visibility: "all", teachers: [] }; }
    if (v.kind === "teachers") { return { visibility: "teachers", teachers: v.names || [] }; }
    return { visibility: "admins", teachers: [] };
  }

  function visibilityText(o) {
    if (o.visibility === "all") { return "all teachers"; }
    if (o.visibility === "teachers") { return o.teachers.join(", "); }
    return "admins only";
  }

  // The visibility dialog: PUT /api/templates/{cluster}/{vmid} {visibility, teachers}; the row's
  // "Open to" cell follows the answer.
  var vdialog = document.getElementById("visibility-dialog");
  var vbutton = null;
  if (vdialog) {
    var vform = vdialog.querySelector("form");
    vdialog.addEventListener("click", function (ev) {
      if (ev.target.closest && ev.target.closest("button[data-close]")) { vdialog.close(); }
    });
    vform.addEventListener("submit", function (ev) {
      ev.preventDefault();
      if (!vbutton) { return; }
      var out = vform.querySelector('[data-f="result"]');
      var body = { visibility: vform.elements.visibility.value };
      if (body.visibility === "teachers") { body.teachers = teacherList(vform.elements.teachers.value); }
      var b = vbutton;
      show(out, "Saving…", true);
      call("PUT", "/api/templates/" + encodeURIComponent(b.getAttribute("data-cluster")) + "/" +
        encodeURIComponent(b.getAttribute("data-vmid")), body).then(function (t) {
        var o = openTo(t);
        var row = b.closest("tr");
        setText(row && row.querySelector('[data-f="visibility"]'), visibilityText(o));
        b.setAttribute("data-visibility", o.visibility);
        b.setAttribute("data-teachers", o.teachers.join(", "));
        vdialog.close();
        if (tform) { show(tform.querySelector('[data-f="result"]'), (t.name || "The template") + " is open to " + visibilityText(o) + ".", true); }
      }).catch(function (e) { show(out, e.message, false); });
    });
  }

  var ttable = document.getElementById("templates");
  if (ttable && tform) {
    ttable.addEventListener("click", function (ev) {
      var vb = ev.target.closest ? ev.target.closest('button[data-action="template-visibility"]') : null;
      if (vb && vdialog) {
        vbutton = vb;
        var f = vdialog.querySelector("form");
        vdialog.querySelector('[data-f="template"]').textContent = vb.getAttribute("data-name") + " (" +
          vb.getAttribute("data-cluster") + "/" + vb.getAttribute("data-vmid") + ")";
        f.elements.visibility.value = vb.getAttribute("data-visibility") || "all";
        f.elements.teachers.value = vb.getAttribute("data-teachers") || "";
        show(f.querySelector('[data-f="result"]'), "", true);
        vdialog.showModal();
        return;
      }
      var button = ev.target.closest ? ev.target.closest('button[data-action="unregister-template"]') : null;
      if (!button) { return; }
      var out = tform.querySelector('[data-f="result"]');
      var key = button.getAttribute("data-cluster") + "/" + button.getAttribute("data-vmid");
      button.disabled = true;
      call("DELETE", "/api/templates/" + encodeURIComponent(button.getAttribute("data-cluster")) + "/" +
        encodeURIComponent(button.getAttribute("data-vmid"))).then(function () {
        var row = button.closest("tr");
        if (row) { row.parentNode.removeChild(row); }
        show(out, "Template " + key + " unregistered.", true);
      }).catch(function (e) {
        show(out, e.message, false);
        button.disabled = false;
      });
    });
  }

  // ---- /classes/{id} -------------------------------------------------------------------------------

  var page = document.getElementById("class-page");
  if (!page) { return; }
  var api = page.getAttribute("data-api");
  var result = document.getElementById("class-result");

  var rows = {};
  var trs = document.querySelectorAll("#class-vms tr[data-key]");
  for (var i = 0; i < trs.length; i++) { rows[trs[i].getAttribute("data-key")] = trs[i]; }
  var teacherBadge = document.querySelector("[data-teacher-state]");

  function field(row, name) { return row.querySelector('[data-f="' + name + '"]'); }
  function setText(el, text) { if (el && el.textContent !== text) { el.textContent = text; } }

  function patchGuest(g) {
    var key = g.cluster + "/" + g.vmid;
    var row = rows[key];
    if (row) {
      setText(field(row, "name"), g.name);
      setText(field(row, "node"), g.node);
      var badge = field(row, "state");
      if (badge) { setText(badge, g.state); badge.className = "badge state-" + g.state; }
      var addr = g.state === "running" && g.ip && g.ip.address ? g.ip.address : "";
      setText(field(row, "ip"), addr);
    }
    if (teacherBadge && teacherBadge.getAttribute("data-key") === key) {
      setText(teacherBadge, g.state);
      teacherBadge.className = "badge state-" + g.state;
    }
  }

  var progress = document.getElementById("job-progress");
  var jobPanel = document.getElementById("job-panel");
  var reloading = false;
  var leaving = null; // set once the class is being deleted: where to go instead of reloading
  function reloadSoon() {
    if (reloading) { return; }
    reloading = true;
    window.setTimeout(function () {
      if (leaving) { window.location.href = leaving; } else { window.location.reload(); }
    }, 800);
  }

  // A job event is flat: {job_id, job_kind, class_id, seq, at, type: job|step|progress, ...its fields}.
  function onJobEvent(ev) {
    var k = ev;
    if (!k || !k.type) { return; }
    if (k.type === "progress" && progress) {
      if (jobPanel) { jobPanel.hidden = false; }
      progress.hidden = false;
      var bar = progress.querySelector('[data-f="bar"]');
      if (bar) { bar.max = k.total; bar.value = k.done; }
      setText(progress.querySelector('[data-f="text"]'),
        ev.job_kind + ": " + k.done + " of " + k.total + " steps" + (k.failed ? ", " + k.failed + " failed" : ""));
    } else if (k.type === "job") {
      var row = document.querySelector('#class-jobs tr[data-job="' + ev.job_id + '"]');
      if (row) {
        var b = field(row, "state");
        if (b) { setText(b, k.state); b.className = "badge job-" + k.state; }
      }
      if (k.state !== "running" && k.state !== "pending") { reloadSoon(); }
      else if (!row) { reloadSoon(); }
    } else if (k.type === "step" && k.state === "failed" && result) {
      show(result, "VM " + (k.name || k.vmid || "") + " failed: " + (k.error || "error"), false);
    }
  }

  if (window.EventSource) {
    var es = new EventSource("/api/events");
    es.onopen = function () { setLive("open"); };
    es.onerror = function () { setLive(es.readyState === 2 ? "error" : "connecting"); };
    es.addEventListener("guest", function (e) {
      try { var d = JSON.parse(e.data); if (d && d.guest) { patchGuest(d.guest); } } catch (x) { /* ignore */ }
    });
    es.addEventListener("resync", function () { reloadSoon(); });
    var js = new EventSource(api + "/events");
    js.addEventListener("snapshot", function (e) {
      try {
        var d = JSON.parse(e.data);
        // The page was rendered while a job ran; if it has ended before this stream opened, show the end.
        var shown = page.getAttribute("data-job");
        if (shown && (d.running_jobs || []).indexOf(shown) < 0) { reloadSoon(); }
        (d.vms || []).forEach(function (v) {
          if (!rows[v.cluster + "/" + v.vmid]) { return; } // new VMs show when their job ends (reload)
          patchGuest({ cluster: v.cluster, vmid: v.vmid, name: v.name, node: v.node, state: v.state, ip: v.ip ? { address: v.ip } : null });
          setText(field(rows[v.cluster + "/" + v.vmid], "user"), v.user || "—");
        });
      } catch (x) { /* ignore */ }
    });
    ["job", "step", "progress"].forEach(function (name) {
      js.addEventListener(name, function (e) {
        try { onJobEvent(JSON.parse(e.data)); } catch (x) { /* ignore */ }
      });
    });
    js.addEventListener("resync", function () { reloadSoon(); });
  }

  // ---- buttons ---------------------------------------------------------------------------------------

  function busy(button, p) {
    button.disabled = true;
    return p.then(function (v) { button.disabled = false; return v; }, function (e) { button.disabled = false; throw e; });
  }

  var publishDialog = document.getElementById("publish-dialog");
  var deleteDialog = document.getElementById("delete-dialog");

  if (publishDialog) {
    publishDialog.addEventListener("close", function () {
      if (publishDialog.returnValue !== "confirm") { return; }
      var mode = publishDialog.querySelector('input[name="mode"]:checked');
      mode = mode ? mode.value : "next-revert";
      show(result, "Publishing…", true);
      call("POST", api + "/publish-template", { mode: mode, confirm: mode === "now" }).then(function (d) {
        show(result, "Publish started (job " + d.job.id + ").", true);
        reloadSoon();
      }).catch(function (e) { show(result, e.message, false); });
    });
  }

  if (deleteDialog) {
    deleteDialog.addEventListener("close", function () {
      if (deleteDialog.returnValue !== "confirm") { return; }
      var typed = document.getElementById("delete-confirm").value.trim();
      var id = page.getAttribute("data-class");
      if (typed !== id) { show(result, "The class id did not match; nothing was deleted.", false); return; }
      show(result, "Deleting…", true);
      call("DELETE", api + "?confirm=" + encodeURIComponent(typed)).then(function () {
        var name = (document.querySelector(".page-head h1") || {}).textContent || id;
        show(result, "The class is being deleted.", true);
        // Back to the class list with a notice, never to this page's 404 once the class is gone.
        try { window.sessionStorage.setItem("proxlab-notice", name + " is being deleted: its VMs and overlays are removed in the background."); } catch (x) { /* private mode */ }
        leaving = "/classes";
        reloadSoon();
      }).catch(function (e) { show(result, e.message, false); });
    });
  }

  page.addEventListener("click", function (ev) {
    var button = ev.target.closest ? ev.target.closest("button[data-action]") : null;
    if (!button) { return; }
    var action = button.getAttribute("data-action");
    if (action === "teacher") {
      var op = button.getAttribute("data-op");
      show(result, "Teacher VM: " + op + "…", true);
      busy(button, call("POST", api + "/teacher/" + op)).then(function () {
        show(result, "Teacher VM: " + op + " done.", true);
      }).catch(function (e) { show(result, e.message, false); });
    } else if (action === "publish" && publishDialog) {
      publishDialog.showModal();
    } else if (action === "delete" && deleteDialog) {
      document.getElementById("delete-confirm").value = "";
      deleteDialog.showModal();
    } else if (action === "invite") {
      var ttl = document.getElementById("invite-ttl");
      var v = ttl ? ttl.value : "";
      var body = v === "never" ? { never: true } : (v ? { expires_in_secs: parseInt(v, 10) } : {});
      var max = document.getElementById("invite-max");
      if (max && max.value.trim() !== "") {
        var n = Number(max.value.trim());
        if (!Number.isInteger(n) || n < 0) { show(result, "New accounts at most: give a whole number (or leave it empty).", false); return; }
        body.max_registrations = n;
      }
      busy(button, call("POST", api + "/invite", body)).then(function (d) {
        var url = d.url;
        if (url.charAt(0) === "/") { url = window.location.origin + url; }
        document.getElementById("invite-url").value = url;
        document.getElementById("invite-new").hidden = false;
        show(result, "Invite link created. It is shown only now: copy it.", true);
      }).catch(function (e) { show(result, e.message, false); });
    } else if (action === "copy") {
      var input = document.getElementById("invite-url");
      var done = function () { show(result, "Copied.", true); };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(input.value).then(done, function () { input.select(); });
      } else {
        input.select();
        try { document.execCommand("copy"); done(); } catch (x) { /* the text stays selected */ }
      }
    } else if (action === "revoke") {
      var inv = button.getAttribute("data-invite");
      busy(button, call("DELETE", api + "/invites/" + encodeURIComponent(inv))).then(function () {
        button.parentNode.textContent = "revoked";
        show(result, "Invite " + inv + " revoked.", true);
      }).catch(function (e) { show(result, e.message, false); });
    }
  });
})();
