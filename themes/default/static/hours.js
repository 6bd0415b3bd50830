// Proxlab default theme: the class hours panel of /classes/{id} (section#class-hours). No inline script
// (CSP). It reads GET {data-api} ({hours: {timetable: {zone, weekly: [{days, start, end}], once: [{date,
// start, end}], warmup_minutes, grace_minutes, outside}, quota_hours, extra_minutes}} or {hours: null}),
// draws the week as an SVG calendar, edits it in form#hours-form and saves it with PUT {data-api}. A
// refusal names the field (error.field, e.g. "timetable.weekly[1].end"); that input is marked and
// focused, and nothing stored changed. GET {data-usage} ({usage: [{user, used_secs, used_text,
// quota_secs, remaining_secs, remaining_text, running}]}) fills table#hours-usage, whose inputs
// [data-extra-user] hold the extra minutes granted per student (saved with the form).
(function () {
  "use strict";

  var panel = document.getElementById("class-hours");
  if (!panel) { return; }
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : "";
  var form = document.getElementById("hours-form");
  var out = form.querySelector('[data-f="result"]');
  var DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
  var DAY_NAMES = { mon: "Mon", tue: "Tue", wed: "Wed", thu: "Thu", fri: "Fri", sat: "Sat", sun: "Sun" };
  var SVG = "http://www.w3.org/2000/svg";

  function call(method, url, body) {
    var opts = { method: method, credentials: "same-origin", headers: { "Accept": "application/json", "X-CSRF-Token": csrf } };
    if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    return fetch(url, opts).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (b) {
        if (!r.ok) {
          var err = new Error((b.error && b.error.message) || ("HTTP " + r.status));
          err.field = b.error && b.error.field;
          throw err;
        }
        return b;
      });
    });
  }

  function show(text, ok) {
    out.textContent = text;
    out.className = "result " + (ok ? "result-ok" : "result-bad");
  }

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = text; }
    return e;
  }

  function timeInput(name, value, field, label) {
    return el("input", { type: "time", name: name, value: value || "", required: "", step: "60", "data-field": field, "aria-label": label });
  }

  function removeButton(label) {
    return el("button", { type: "button", "class": "button", "data-hours": "remove", "aria-label": label }, "Remove");
  }

  function weeklyRow(slot, i) {
    var tr = el("tr", { "data-slot": "weekly" });
    var days = el("td", { "data-field": "weekly[" + i + "].days" });
    DAYS.forEach(function (d) {
      var l = el("label", { "class": "day-check" });
      var c = el("input", { type: "checkbox", value: d });
      if ((slot.days || []).indexOf(d) >= 0) { c.checked = true; }
      l.appendChild(c);
      l.appendChild(document.createTextNode(" " + DAY_NAMES[d]));
      days.appendChild(l);
    });
    tr.appendChild(days);
    var s = el("td"); s.appendChild(timeInput("start", slot.start, "weekly[" + i + "].start", "Start of weekly slot " + (i + 1))); tr.appendChild(s);
    var e = el("td"); e.appendChild(timeInput("end", slot.end, "weekly[" + i + "].end", "End of weekly slot " + (i + 1))); tr.appendChild(e);
    var r = el("td"); r.appendChild(removeButton("Remove weekly slot " + (i + 1))); tr.appendChild(r);
    return tr;
  }

  function onceRow(slot, i) {
    var tr = el("tr", { "data-slot": "once" });
    var d = el("td");
    d.appendChild(el("input", { type: "date", name: "date", value: slot.date || "", required: "", "data-field": "once[" + i + "].date", "aria-label": "Date of session " + (i + 1) }));
    tr.appendChild(d);
    var s = el("td"); s.appendChild(timeInput("start", slot.start, "once[" + i + "].start", "Start of session " + (i + 1))); tr.appendChild(s);
    var e = el("td"); e.appendChild(timeInput("end", slot.end, "once[" + i + "].end", "End of session " + (i + 1))); tr.appendChild(e);
    var r = el("td"); r.appendChild(removeButton("Remove session " + (i + 1))); tr.appendChild(r);
    return tr;
  }

  function renumber() {
    // Field names follow the row order, so a refusal's field finds its input.
    document.querySelectorAll('#hours-weekly tbody tr[data-slot="weekly"]').forEach(function (tr, i) {
      tr.cells[0].setAttribute("data-field", "weekly[" + i + "].days");
      tr.querySelector('[name="start"]').setAttribute("data-field", "weekly[" + i + "].start");
      tr.querySelector('[name="end"]').setAttribute("data-field", "weekly[" + i + "].end");
      tr.setAttribute("data-field", "weekly[" + i + "]");
    });
    document.querySelectorAll('#hours-once tbody tr[data-slot="once"]').forEach(function (tr, i) {
      tr.querySelector('[name="date"]').setAttribute("data-field", "once[" + i + "].date");
      tr.querySelector('[name="start"]').setAttribute("data-field", "once[" + i + "].start");
      tr.querySelector('[name="end"]').setAttribute("data-field", "once[" + i + "].end");
      tr.setAttribute("data-field", "once[" + i + "]");
    });
  }

  // Extra minutes the teacher granted per student: kept from the last answer and sent back with every
  // save (a save never drops a grant), edited in the usage table.
  var extra = {};

  function fill(h) {
    extra = {};
    Object.keys(h.extra_minutes || {}).forEach(function (u) { extra[u] = h.extra_minutes[u]; });
    var t = h.timetable || {};
    form.elements.zone.value = t.zone || "";
    form.elements.warmup_minutes.value = t.warmup_minutes === undefined ? 10 : t.warmup_minutes;
    form.elements.grace_minutes.value = t.grace_minutes === undefined ? 5 : t.grace_minutes;
    form.elements.outside.value = t.outside || "students_may_start";
    form.elements.quota_hours.value = h.quota_hours === null || h.quota_hours === undefined ? "" : h.quota_hours;
    var wb = document.querySelector("#hours-weekly tbody");
    var ob = document.querySelector("#hours-once tbody");
    wb.textContent = "";
    ob.textContent = "";
    (t.weekly || []).forEach(function (s, i) { wb.appendChild(weeklyRow(s, i)); });
    (t.once || []).forEach(function (s, i) { ob.appendChild(onceRow(s, i)); });
    renumber();
    draw(t);
  }

  function collect() {
    var weekly = [];
    document.querySelectorAll('#hours-weekly tbody tr[data-slot="weekly"]').forEach(function (tr) {
      var days = [];
      tr.querySelectorAll('input[type="checkbox"]').forEach(function (c) { if (c.checked) { days.push(c.value); } });
      weekly.push({ days: days, start: tr.querySelector('[name="start"]').value, end: tr.querySelector('[name="end"]').value });
    });
    var once = [];
    document.querySelectorAll('#hours-once tbody tr[data-slot="once"]').forEach(function (tr) {
      once.push({ date: tr.querySelector('[name="date"]').value, start: tr.querySelector('[name="start"]').value, end: tr.querySelector('[name="end"]').value });
    });
    var q = form.elements.quota_hours.value.trim();
    return {
      timetable: {
        zone: form.elements.zone.value.trim(),
        weekly: weekly,
        once: once,
        warmup_minutes: Number(form.elements.warmup_minutes.value || 0),
        grace_minutes: Number(form.elements.grace_minutes.value || 0),
        outside: form.elements.outside.value
      },
      quota_hours: q === "" ? null : Number(q),
      extra_minutes: extraMinutes()
    };
  }

  function extraMinutes() {
    var out = {};
    Object.keys(extra).forEach(function (u) { out[u] = extra[u]; });
    document.querySelectorAll("#hours-usage input[data-extra-user]").forEach(function (i) {
      var u = i.getAttribute("data-extra-user");
      var v = i.value.trim();
      if (v === "" || Number(v) === 0) { delete out[u]; } else { out[u] = Number(v); }
    });
    return out;
  }

  function minutes(hhmm) {
    var p = /^(\d\d):(\d\d)$/.exec(hhmm || "");
    return p ? Number(p[1]) * 60 + Number(p[2]) : null;
  }

  // The week as an SVG: a column per day, a block per weekly slot, labelled with its times (readable
  // without colour: every block carries its text and a title).
  function draw(t) {
    var box = document.getElementById("hours-calendar");
    box.textContent = "";
    var slots = [];
    (t.weekly || []).forEach(function (s) {
      var a = minutes(s.start), b = minutes(s.end);
      if (a === null || b === null || b <= a) { return; }
      (s.days || []).forEach(function (d) { slots.push({ day: DAYS.indexOf(d), a: a, b: b, text: s.start + "–" + s.end }); });
    });
    var lo = 8 * 60, hi = 18 * 60;
    slots.forEach(function (s) { lo = Math.min(lo, Math.floor(s.a / 60) * 60); hi = Math.max(hi, Math.ceil(s.b / 60) * 60); });
    var W = 700, H = 300, left = 44, top = 22, colW = (W - left) / 7, scale = (H - top - 4) / (hi - lo);
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("class", "calendar");
    svg.setAttribute("aria-hidden", "true");
    function add(tag, attrs, text) {
      var n = document.createElementNS(SVG, tag);
      Object.keys(attrs).forEach(function (k) { n.setAttribute(k, attrs[k]); });
      if (text !== undefined) { n.textContent = text; }
      svg.appendChild(n);
      return n;
    }
    DAYS.forEach(function (d, i) {
      add("text", { x: left + colW * i + colW / 2, y: 15, "text-anchor": "middle", "class": "cal-day" }, DAY_NAMES[d]);
      add("line", { x1: left + colW * i, y1: top, x2: left + colW * i, y2: H, "class": "cal-grid" });
    });
    for (var m = lo; m <= hi; m += 60) {
      var y = top + (m - lo) * scale;
      add("line", { x1: left, y1: y, x2: W, y2: y, "class": "cal-grid" });
      add("text", { x: left - 4, y: y + 4, "text-anchor": "end", "class": "cal-hour" }, (m / 60 < 10 ? "0" : "") + (m / 60) + ":00");
    }
    slots.forEach(function (s) {
      var g = add("g", { "class": "cal-slot", "data-day": DAYS[s.day] });
      var r = document.createElementNS(SVG, "rect");
      r.setAttribute("x", left + colW * s.day + 3);
      r.setAttribute("y", top + (s.a - lo) * scale);
      r.setAttribute("width", colW - 6);
      r.setAttribute("height", Math.max(8, (s.b - s.a) * scale));
      r.setAttribute("rx", 3);
      var title = document.createElementNS(SVG, "title");
      title.textContent = DAY_NAMES[DAYS[s.day]] + " " + s.text;
      r.appendChild(title);
      g.appendChild(r);
      var label = document.createElementNS(SVG, "text");
      label.setAttribute("x", left + colW * s.day + colW / 2);
      label.setAttribute("y", top + (s.a - lo) * scale + 14);
      label.setAttribute("text-anchor", "middle");
      label.textContent = s.text;
      g.appendChild(label);
    });
    box.appendChild(svg);
    var words = slots.length ? slots.map(function (s) { return DAY_NAMES[DAYS[s.day]] + " " + s.text; }).join(", ") : "no weekly slots";
    var once = (t.once || []).map(function (o) { return o.date + " " + o.start + "–" + o.end; });
    box.setAttribute("aria-label", "Week calendar: " + words);
    document.getElementById("hours-summary").textContent = "Weekly: " + words + (once.length ? "; one-off: " + once.join(", ") : "") + " (" + (t.zone || "UTC") + ").";
  }

  function clearMarks() {
    form.querySelectorAll("[aria-invalid]").forEach(function (e) { e.removeAttribute("aria-invalid"); e.classList.remove("invalid"); });
  }

  function mark(field) {
    if (!field) { return; }
    field = field.replace(/^timetable\./, "");
    var target = form.querySelector('[data-field="' + field + '"]');
    if (!target) { return; }
    target.setAttribute("aria-invalid", "true");
    target.classList.add("invalid");
    var focusable = target.matches("input, select") ? target : target.querySelector("input, select");
    if (focusable) { focusable.focus(); }
  }

  function loadUsage() {
    var body = document.querySelector("#hours-usage tbody");
    return call("GET", panel.getAttribute("data-usage")).then(function (u) {
      body.textContent = "";
      var list = u.usage || [];
      if (!list.length) { body.appendChild(el("tr")).appendChild(el("td", { colspan: "5", "class": "empty" }, "No students yet.")); return; }
      list.forEach(function (s) {
        var tr = el("tr", { "data-user": s.user });
        tr.appendChild(el("td", {}, s.user));
        tr.appendChild(el("td", { "class": "num", "data-f": "used" }, s.used_text));
        tr.appendChild(el("td", { "class": "num", "data-f": "left" }, s.quota_secs === null || s.quota_secs === undefined ? "no quota" : s.remaining_text));
        var bar = el("td");
        if (s.quota_secs) {
          var m = el("meter", { min: "0", max: String(s.quota_secs), value: String(Math.min(s.used_secs, s.quota_secs)), "aria-label": "Hours used by " + s.user });
          bar.appendChild(m);
          bar.appendChild(document.createTextNode(" " + Math.round(100 * Math.min(s.used_secs, s.quota_secs) / s.quota_secs) + " %"));
        }
        tr.appendChild(bar);
        var cell = el("td", { "class": "num" });
        cell.appendChild(el("input", { type: "number", min: "0", max: "100000", step: "1", value: extra[s.user] ? String(extra[s.user]) : "",
          placeholder: "0", "data-extra-user": s.user, "aria-label": "Extra minutes for " + s.user }));
        tr.appendChild(cell);
        body.appendChild(tr);
      });
    }).catch(function (e) {
      body.textContent = "";
      body.appendChild(el("tr")).appendChild(el("td", { colspan: "5", "class": "result-bad" }, e.message));
    });
  }

  function load() {
    return call("GET", panel.getAttribute("data-api")).then(function (b) { fill(b.hours || {}); }).catch(function (e) { show(e.message, false); });
  }

  panel.addEventListener("click", function (ev) {
    var b = ev.target.closest ? ev.target.closest("button[data-hours]") : null;
    if (!b) { return; }
    var what = b.getAttribute("data-hours");
    if (what === "add-weekly") {
      var wb = document.querySelector("#hours-weekly tbody");
      wb.appendChild(weeklyRow({ days: ["mon"], start: "09:00", end: "10:30" }, wb.rows.length));
    } else if (what === "add-once") {
      var ob = document.querySelector("#hours-once tbody");
      ob.appendChild(onceRow({ date: "", start: "09:00", end: "10:30" }, ob.rows.length));
    } else if (what === "remove") {
      var tr = b.closest("tr");
      if (tr) { tr.parentNode.removeChild(tr); }
    }
    renumber();
    draw(collect().timetable);
  });

  form.addEventListener("change", function () { draw(collect().timetable); });

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    clearMarks();
    var body = collect();
    var submit = form.querySelector('button[type="submit"]');
    submit.disabled = true;
    show("Saving…", true);
    call("PUT", panel.getAttribute("data-api"), body).then(function (b) {
      submit.disabled = false;
      fill(b.hours || {});
      show("Class hours saved.", true);
      loadUsage();
    }).catch(function (e) {
      submit.disabled = false;
      show(e.message, false);
      mark(e.field);
    });
  });

  var zones = document.getElementById("hours-zones");
  if (zones && typeof Intl !== "undefined" && Intl.supportedValuesOf) {
    Intl.supportedValuesOf("timeZone").forEach(function (z) { zones.appendChild(el("option", { value: z })); });
  }

  load().then(loadUsage);
})();
