// The main journey of Proxlab in a real browser (issue 7): Debian's chromium, headless, driven by
// playwright-core, against a real `proxlab serve`, a fake PVE cluster, loopback sshd and real qemu-img.
//
//   node tests/browser/journey.mjs <base-url> <plan.json>
//
// Run by core/proxlab/tests/journey.rs once per phase (the server restarts between phases 1 and 2, and
// the test starts the students' "VMs" — sshd on their addresses — between phases 3 and 4). Every user has
// their own chromium profile under plan.profiles/<user>, so a session made in one phase is used in the next.
//
// plan.json: {"phase", "artifacts", "profiles", ...phase fields}; phases:
//   cluster  {admin, admin_password, cluster: {id, name, url, token_id, token_secret, fingerprint}}:
//            the admin signs in, fills /admin/clusters, tests the connection, reads the proxlab.toml snippet.
//   setup    {admin, teacher, teacher_password, template_vmid, spare_template_vmid, class_name, pool_size,
//            teacher_classes, teacher_vms, invite_max, quota_hours}:
//            the admin registers the template on /classes (open to all teachers), registers the spare one,
//            opens it to the teacher by name with its dialog and unregisters it with its button, and sets
//            the teacher's own limits on /admin/users; the teacher creates the class, watches the
//            deployment to the end, creates an invite link for invite_max new accounts and copies it,
//            and sets the class hours (a weekly slot and a one-off session in Europe/London, after a
//            refused one) and a usage quota of quota_hours.
//   students {invite, students: [{user, display, password}]}: each registers through the invite link, sees
//            the join page (opening the link joins no one), clicks Join, lands on the portal with a
//            "joined" notice and one VM, starts it, sees its IP appear without a reload, opens Connect
//            and downloads the .rdp file.
//   terminal {students: [{user, vmid}], guest_user, guest_password}: each opens the SSH terminal of their
//            VM, logs in, runs a command and sees its output, then reverts the VM in the portal.
//   publish  {teacher, class_id, student: {user, vmid}}: the teacher publishes the teacher VM as a new
//            base (students move on their next revert); the student reverts.
//   delete   {teacher, class_id}: the teacher deletes the class through the typed confirmation.
// Prints one JSON line with what it saw; exits 1 with the reason (and a failure screenshot) otherwise.
import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { args, failer, launch, loadChromium } from "./common.mjs";

const fail = failer("journey.mjs");
const { base, plan } = args("journey.mjs");
const chromium = await loadChromium("journey.mjs");
mkdirSync(plan.artifacts, { recursive: true });
const origin = new URL(base).origin;
const seen = { phase: plan.phase };
const problems = [];
let current = null; // { context, page, user } of the step running, for the failure screenshot
let shot = 0;

/** Opens (or reopens) `user`'s browser: a persistent chromium profile, so sessions carry over phases. */
async function browser(user) {
  const dir = join(plan.profiles, user);
  mkdirSync(dir, { recursive: true });
  const context = await launch(chromium, dir, { acceptDownloads: true });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin });
  // Nothing may leave the portal's own origin.
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(origin + "/") || url === origin) { return route.continue(); }
    problems.push(`${user}: blocked a request to ${url}`);
    return route.abort();
  });
  const page = context.pages()[0] || await context.newPage();
  page.on("pageerror", (e) => problems.push(`${user}: page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) {
      problems.push(`${user}: console error: ${m.text()}`);
    }
  });
  current = { context, page, user };
  return current;
}

async function step(name, fn) {
  try {
    return await fn();
  } catch (e) {
    if (current) {
      try {
        await current.page.screenshot({ path: join(plan.artifacts, `journey-failure-${plan.phase}.png`), fullPage: true });
      } catch (_) { /* ignore */ }
      await current.context.close().catch(() => {});
    }
    fail(`${plan.phase}: ${name}: ${e.message}\nproblems: ${JSON.stringify(problems)}\nseen: ${JSON.stringify(seen)}`);
  }
}

/** Keeps a numbered screenshot of `page` as an artifact. */
async function screenshot(page, name) {
  shot += 1;
  const path = join(plan.artifacts, `journey-${plan.phase}-${shot}-${name}.png`);
  await page.screenshot({ path, fullPage: true });
  (seen.screenshots ||= []).push(path);
}

async function signIn(page, user, password, to = "/portal") {
  await page.goto(base + to);
  if (new URL(page.url()).pathname !== "/login") { return; } // still signed in from an earlier phase
  await page.locator("#username").fill(user);
  await page.locator("#password").fill(password);
  await Promise.all([
    page.waitForURL((u) => new URL(u).pathname !== "/login", { timeout: 15000 }),
    page.getByRole("button", { name: "Sign in" }).click(),
  ]);
}

/** Goes to `path` and fails unless it is served (not sent to sign in). */
async function open(page, path) {
  const r = await page.goto(base + path);
  if (new URL(page.url()).pathname === "/login") { throw new Error(`${path}: sent to sign in (session lost)`); }
  if (r.status() !== 200) { throw new Error(`${path} answered ${r.status()}`); }
}

function card(page, vmid) {
  return page.locator(`.vm-card[data-vmid="${vmid}"]`);
}

async function revert(page, vmid) {
  const vm = card(page, vmid);
  await vm.getByRole("button", { name: "Revert" }).click();
  await page.locator("#revert-dialog").waitFor({ state: "visible", timeout: 5000 });
  await page.locator("#revert-confirm").click();
  await vm.locator('[data-f="result"]').filter({ hasText: "Revert: done" }).waitFor({ timeout: 60000 });
  await vm.locator('[data-f="state"]').filter({ hasText: "stopped" }).waitFor({ timeout: 30000 });
}

// ---- phases ----------------------------------------------------------------------------------------

async function phaseCluster() {
  const { context, page } = await browser(plan.admin);
  await step("admin signs in", () => signIn(page, plan.admin, plan.admin_password, "/admin/clusters"));
  await step("cluster form: test the connection with token and fingerprint", async () => {
    await open(page, "/admin/clusters");
    const form = page.locator("#cluster-form");
    const c = plan.cluster;
    await form.locator('input[name="id"]').fill(c.id);
    await form.locator('input[name="name"]').fill(c.name);
    await form.locator('input[name="url"]').fill(c.url);
    await form.locator('input[name="token_id"]').fill(c.token_id);
    await form.locator('input[name="token_secret"]').fill(c.token_secret);
    await form.locator('input[name="fingerprint"]').fill(c.fingerprint);
    await form.getByRole("button", { name: "Test connection" }).click();
    const out = form.locator('[data-f="result"]');
    await page.waitForFunction(() => {
      const o = document.querySelector('#cluster-form [data-f="result"]');
      return o && o.textContent.trim() !== "" && !/^Working/.test(o.textContent.trim());
    }, null, { timeout: 20000 });
    seen.test_result = (await out.textContent()).trim();
    seen.test_ok = await out.evaluate((e) => e.classList.contains("result-ok"));
    if (!seen.test_ok) { throw new Error("the connection test failed: " + seen.test_result); }
    seen.snippet = (await page.locator("#cluster-snippet").textContent()).trim();
    if (seen.snippet.includes(c.token_secret)) { throw new Error("the snippet shows the token secret"); }
    await screenshot(page, "admin-cluster-tested");
  });
  await context.close();
}

async function phaseSetup() {
  {
    const { context, page } = await browser(plan.admin);
    await step("admin registers the template on /classes", async () => {
      await open(page, "/classes");
      const form = page.locator("#register-template");
      await form.locator('input[name="vmid"]').fill(String(plan.template_vmid));
      await form.locator('select[name="visibility"]').selectOption("all");
      await Promise.all([
        page.waitForEvent("load", { timeout: 20000 }),
        form.getByRole("button", { name: "Register template" }).click(),
      ]);
      const row = page.locator(`#templates tr[data-template$="/${plan.template_vmid}"]`);
      await row.waitFor({ timeout: 10000 });
      seen.template_row = (await row.textContent()).replace(/\s+/g, " ").trim();
      if (!seen.template_row.includes("all teachers")) { throw new Error("the template row does not say it is open to all teachers: " + seen.template_row); }
      await screenshot(page, "admin-template-registered");
    });
    await step("admin registers a second template and unregisters it", async () => {
      const form = page.locator("#register-template");
      await form.locator('input[name="vmid"]').fill(String(plan.spare_template_vmid));
      await form.locator('select[name="visibility"]').selectOption("admins");
      await Promise.all([
        page.waitForEvent("load", { timeout: 20000 }),
        form.getByRole("button", { name: "Register template" }).click(),
      ]);
      const row = page.locator(`#templates tr[data-template$="/${plan.spare_template_vmid}"]`);
      await row.waitFor({ timeout: 10000 });
      // Opened to the teacher by name with its dialog: the row says so at once and after a reload.
      await row.getByRole("button", { name: "Change who may use it" }).click();
      const dialog = page.locator("#visibility-dialog");
      await dialog.locator('select[name="visibility"]').selectOption("teachers");
      await dialog.locator('input[name="teachers"]').fill(plan.teacher);
      await dialog.getByRole("button", { name: "Save" }).click();
      await dialog.waitFor({ state: "hidden", timeout: 10000 });
      const cell = row.locator('[data-f="visibility"]');
      if ((await cell.textContent()).trim() !== plan.teacher) { throw new Error("the row says it is open to " + (await cell.textContent())); }
      await open(page, "/classes");
      seen.spare_visibility = (await row.locator('[data-f="visibility"]').textContent()).trim();
      if (seen.spare_visibility !== plan.teacher) { throw new Error("after a reload the spare template is open to " + seen.spare_visibility); }
      await row.getByRole("button", { name: "Unregister" }).click();
      await row.waitFor({ state: "detached", timeout: 10000 });
      await page.locator("#register-template [data-f=result]").filter({ hasText: "unregistered" }).waitFor({ timeout: 10000 });
      await open(page, "/classes");
      if (await page.locator(`#templates tr[data-template$="/${plan.spare_template_vmid}"]`).count() !== 0) {
        throw new Error("the unregistered template is still listed after a reload");
      }
      seen.spare_unregistered = true;
    });
    await step("admin sets the teacher's own limits on /admin/users", async () => {
      await open(page, "/admin/users");
      const row = page.locator(`#users tr[data-user="${plan.teacher}"]`);
      await row.getByRole("button", { name: "Set limits" }).click();
      const dialog = page.locator("#limits-dialog");
      await dialog.locator('input[name="classes"]').fill(String(plan.teacher_classes));
      await dialog.locator('input[name="vms"]').fill(String(plan.teacher_vms));
      await Promise.all([
        page.waitForEvent("load", { timeout: 20000 }),
        dialog.getByRole("button", { name: "Save limits" }).click(),
      ]);
      seen.teacher_limits = (await page.locator(`#users tr[data-user="${plan.teacher}"] [data-f="limits"]`).textContent()).replace(/\s+/g, " ").trim();
      const want = `0 of ${plan.teacher_classes} classes, 0 of ${plan.teacher_vms} VMs set for ${plan.teacher}`;
      if (seen.teacher_limits !== want) { throw new Error(`the limits cell says ${JSON.stringify(seen.teacher_limits)}, want ${JSON.stringify(want)}`); }
    });
    await context.close();
  }
  const { context, page } = await browser(plan.teacher);
  await step("teacher signs in", () => signIn(page, plan.teacher, plan.teacher_password, "/classes"));
  await step("teacher creates the class", async () => {
    await open(page, "/classes");
    if (await page.locator("#register-template").count() !== 0) { throw new Error("a teacher sees the admin's template form"); }
    const form = page.locator("#new-class");
    await form.locator('input[name="name"]').fill(plan.class_name);
    await form.locator('select[name="template_vmid"]').selectOption(String(plan.template_vmid));
    await form.locator('input[name="pool_size"]').fill(String(plan.pool_size));
    await form.locator('input[name="self_registration"]').check();
    await Promise.all([
      page.waitForURL((u) => /^\/classes\/[^/]+$/.test(new URL(u).pathname), { timeout: 20000 }),
      form.getByRole("button", { name: "Create and deploy" }).click(),
    ]);
    seen.class_id = decodeURIComponent(new URL(page.url()).pathname.split("/")[2]);
  });
  await step("teacher watches the deployment to the end", async () => {
    // Progress as the page shows it, sampled until the class is ready (the page reloads when the job ends).
    const samples = [];
    const deadline = Date.now() + 120000;
    for (;;) {
      const s = await page.evaluate(() => {
        const bar = document.querySelector('#job-progress [data-f="bar"]');
        const text = document.querySelector('#job-progress [data-f="text"]');
        const state = document.querySelector('[data-f="class-state"]');
        return {
          value: bar ? +bar.getAttribute("value") || bar.value : null,
          max: bar ? +bar.getAttribute("max") || bar.max : null,
          text: text ? text.textContent.trim() : "",
          state: state ? state.textContent.trim() : "",
        };
      }).catch(() => null); // the page may be reloading
      if (s) {
        const last = samples[samples.length - 1];
        if (!last || last.text !== s.text || last.state !== s.state) { samples.push(s); }
        if (samples.length === 2) { await screenshot(page, "teacher-deploying"); }
        if (s.state === "ready") { break; }
        if (s.state === "failed" || s.state === "partial") { throw new Error("deployment ended " + JSON.stringify(samples)); }
      }
      if (Date.now() > deadline) { throw new Error("the class did not become ready: " + JSON.stringify(samples)); }
      await page.waitForTimeout(100);
    }
    seen.progress = samples;
    seen.student_rows = await page.locator('#class-vms tr[data-role="student"]').count();
    if (seen.student_rows !== plan.pool_size) { throw new Error(`${seen.student_rows} student VMs listed, want ${plan.pool_size}`); }
    await screenshot(page, "teacher-class-ready");
  });
  await step("teacher creates and copies the invite link", async () => {
    await page.locator("#invite-max").fill(String(plan.invite_max));
    await page.locator('button[data-action="invite"]').click();
    const input = page.locator("#invite-url");
    await input.waitFor({ state: "visible", timeout: 10000 });
    seen.invite = await input.inputValue();
    if (!seen.invite.startsWith(origin + "/join/")) { throw new Error("invite link " + seen.invite); }
    await page.locator('button[data-action="copy"]').click();
    await page.waitForTimeout(200);
    seen.clipboard = await page.evaluate(() => navigator.clipboard.readText());
    if (seen.clipboard !== seen.invite) { throw new Error(`clipboard has ${JSON.stringify(seen.clipboard)}`); }
    await screenshot(page, "teacher-invite");
    await page.reload();
    const cells = page.locator("#class-invites tbody tr").first().locator("td");
    seen.invite_accounts = (await cells.nth(5).textContent()).trim();
    if (seen.invite_accounts !== `0 of ${plan.invite_max}`) { throw new Error("the invite row's new accounts say " + seen.invite_accounts); }
  });
  await step("teacher sets the class hours and a usage quota", async () => {
    const panel = page.locator("#class-hours");
    const form = panel.locator("#hours-form");
    await form.locator('input[name="zone"]').waitFor({ timeout: 10000 });
    await form.locator('input[name="zone"]').fill("Europe/London");
    await panel.getByRole("button", { name: "Add a weekly slot" }).click();
    const row = panel.locator("#hours-weekly tbody tr").last();
    await row.getByLabel("Mon").uncheck();
    await row.getByLabel("Wed").check();
    await row.locator('input[name="start"]').fill("09:00");
    await row.locator('input[name="end"]').fill("10:30");
    await form.locator('input[name="quota_hours"]').fill(String(plan.quota_hours));
    // A slot that ends before it starts is refused naming the field, and that input is marked.
    await panel.getByRole("button", { name: "Add a session" }).click();
    const once = panel.locator("#hours-once tbody tr").last();
    await once.locator('input[name="date"]').fill("2027-01-20");
    await once.locator('input[name="start"]').fill("14:00");
    await once.locator('input[name="end"]').fill("13:00");
    await form.getByRole("button", { name: "Save class hours" }).click();
    const out = form.locator('[data-f="result"]');
    await out.filter({ hasText: "ends at 13:00" }).waitFor({ timeout: 10000 });
    seen.hours_refusal = (await out.textContent()).trim();
    if (await once.locator('input[name="end"][aria-invalid="true"]').count() !== 1) { throw new Error("the refused end time is not marked"); }
    await once.locator('input[name="end"]').fill("16:00");
    await form.getByRole("button", { name: "Save class hours" }).click();
    await out.filter({ hasText: "Class hours saved." }).waitFor({ timeout: 10000 });
    await page.reload();
    await panel.locator("#hours-weekly tbody tr").first().waitFor({ timeout: 10000 });
    seen.calendar = (await panel.locator("#hours-summary").textContent()).trim();
    seen.calendar_blocks = await panel.locator("#hours-calendar svg .cal-slot").count();
    if (await form.locator('input[name="zone"]').inputValue() !== "Europe/London") { throw new Error("the zone did not stay"); }
    if (await form.locator('input[name="quota_hours"]').inputValue() !== String(plan.quota_hours)) { throw new Error("the quota did not stay"); }
    await screenshot(page, "teacher-class-hours");
  });
  await context.close();
}

async function phaseStudents() {
  seen.students = [];
  for (const s of plan.students) {
    const { context, page } = await browser(s.user);
    const me = { user: s.user };
    await step(`${s.user} registers through the invite link`, async () => {
      await page.goto(plan.invite);
      if (new URL(page.url()).pathname !== "/login") { throw new Error("not sent to sign in: " + page.url()); }
      await page.locator("#reg-username").fill(s.user);
      await page.locator("#reg-display").fill(s.display);
      await page.locator("#reg-password").fill(s.password);
      await Promise.all([
        page.waitForURL((u) => new URL(u).pathname.startsWith("/join/"), { timeout: 20000 }),
        page.getByRole("button", { name: "Create account and join" }).click(),
      ]);
      // The invite link only shows the class; joining is the Join button's form post.
      me.join_title = (await page.locator("h1").first().textContent({ timeout: 5000 })).trim();
      if (!me.join_title.startsWith("Join ")) { throw new Error("join page title: " + me.join_title); }
      await screenshot(page, `${s.user}-join-page`);
      await Promise.all([
        page.waitForURL((u) => new URL(u).pathname === "/portal", { timeout: 20000 }),
        page.getByRole("button", { name: "Join", exact: true }).click(),
      ]);
      me.notice = (await page.locator("#notice").textContent({ timeout: 5000 })).trim();
      if (!me.notice.startsWith("You joined")) { throw new Error("notice: " + me.notice); }
      const cards = page.locator(".vm-card");
      if (await cards.count() !== 1) { throw new Error(`${await cards.count()} VM cards, want 1`); }
      me.vmid = +(await cards.first().getAttribute("data-vmid"));
      me.name = (await cards.first().locator(".vm-name").textContent()).trim();
      me.class_label = (await cards.first().locator('[data-f="class"]').textContent()).trim();
      await page.waitForSelector('#live[data-state="open"]', { timeout: 10000 });
      await screenshot(page, `${s.user}-joined`);
    });
    await step(`${s.user} starts the VM and sees its IP live`, async () => {
      await page.evaluate(() => { window.__proxlabNoReload = 1; });
      const vm = card(page, me.vmid);
      await vm.getByRole("button", { name: "Start" }).click();
      await vm.locator('[data-f="state"]').filter({ hasText: "running" }).waitFor({ timeout: 30000 });
      await page.waitForFunction((vmid) => {
        const c = document.querySelector(`.vm-card[data-vmid="${vmid}"] [data-f="ip"]`);
        return c && /^\d{1,3}(\.\d{1,3}){3}$/.test(c.textContent.trim());
      }, me.vmid, { timeout: 60000 });
      me.ip = (await vm.locator('[data-f="ip"]').textContent()).trim();
      if (await page.evaluate(() => window.__proxlabNoReload) !== 1) { throw new Error("the page reloaded"); }
    });
    await step(`${s.user} opens Connect and downloads the RDP file`, async () => {
      const vm = card(page, me.vmid);
      await vm.locator("summary", { hasText: "Connect" }).click();
      const body = vm.locator('[data-f="connect"]');
      await body.locator(".connect-list").waitFor({ timeout: 10000 });
      await body.getByText(me.ip).first().waitFor({ timeout: 10000 });
      me.connect = (await body.locator(".connect-item").allTextContents()).map((t) => t.replace(/\s+/g, " ").trim());
      await screenshot(page, `${s.user}-running-connect`);
      const [download] = await Promise.all([
        page.waitForEvent("download", { timeout: 15000 }),
        page.evaluate((vmid) => {
          const a = document.createElement("a");
          a.href = `/rdp/${vmid}.rdp`;
          a.download = "";
          document.body.appendChild(a);
          a.click();
          a.remove();
        }, me.vmid),
      ]);
      me.rdp_name = download.suggestedFilename();
      me.rdp = join(plan.artifacts, `journey-${s.user}.rdp`);
      await download.saveAs(me.rdp);
      await vm.locator("summary", { hasText: "Connect" }).click();
    });
    seen.students.push(me);
    await context.close();
  }
}

async function phaseTerminal() {
  seen.students = [];
  for (const s of plan.students) {
    const { context, page } = await browser(s.user);
    const me = { user: s.user, vmid: s.vmid };
    const rows = () => page.evaluate(() => Array.from(document.querySelectorAll("#terminal .xterm-rows > div"))
      .map((r) => r.textContent.replace(/\u00a0/g, " ").replace(/\s+$/, "")));
    const waitScreen = async (re, timeout = 20000) => {
      const deadline = Date.now() + timeout;
      for (;;) {
        const m = (await rows()).join("\n").match(re);
        if (m) { return m; }
        if (Date.now() > deadline) { throw new Error(`the terminal did not show ${re}: ${(await rows()).join("\n")}`); }
        await page.waitForTimeout(100);
      }
    };
    const typeLine = async (text) => {
      await page.locator("#terminal .xterm-helper-textarea").focus();
      await page.keyboard.type(text);
      await page.keyboard.press("Enter");
    };
    await step(`${s.user} opens the SSH terminal from Connect`, async () => {
      await open(page, "/portal");
      const vm = card(page, s.vmid);
      await vm.locator("summary", { hasText: "Connect" }).click();
      const link = vm.locator('[data-f="connect"] a[href^="/ssh/"]').first();
      await link.waitFor({ timeout: 10000 });
      const href = await link.getAttribute("href");
      await open(page, href);
      await page.locator("#terminal .xterm-rows").waitFor({ timeout: 10000 });
    });
    await step(`${s.user} logs in and runs a command`, async () => {
      await waitScreen(/login as:\s*$/m);
      await typeLine(plan.guest_user);
      await waitScreen(/password:\s*$/m);
      await typeLine(plan.guest_password);
      await page.locator('#conn-state[data-state="connected"]').waitFor({ timeout: 20000 });
      await typeLine(`echo "JOURNEY-${s.user}-$((6*7))-$(hostname -I 2>/dev/null | wc -w)"`);
      me.output = (await waitScreen(new RegExp(`^JOURNEY-${s.user}-42-\\d+$`, "m")))[0];
      await screenshot(page, `${s.user}-terminal`);
      await typeLine("exit");
      await page.locator('#conn-state[data-state="closed"]').waitFor({ timeout: 20000 });
    });
    await step(`${s.user} reverts the VM`, async () => {
      await open(page, "/portal");
      await revert(page, s.vmid);
      await screenshot(page, `${s.user}-reverted`);
    });
    seen.students.push(me);
    await context.close();
  }
}

async function phasePublish() {
  {
    const { context, page } = await browser(plan.teacher);
    await step("teacher publishes the teacher VM as the new base", async () => {
      await open(page, `/classes/${encodeURIComponent(plan.class_id)}`);
      seen.before = (await page.locator(".page-head .muted").first().textContent()).replace(/\s+/g, " ").trim();
      await page.locator('button[data-action="publish"]').click();
      const dialog = page.locator("#publish-dialog");
      await dialog.waitFor({ state: "visible", timeout: 5000 });
      await dialog.locator('input[name="mode"][value="next-revert"]').check();
      await dialog.getByRole("button", { name: "Publish" }).click();
      // The page reloads when the publish job ends; the class then shows base version 2 and its student VMs
      // as outdated until their next revert.
      const deadline = Date.now() + 120000;
      for (;;) {
        const head = await page.locator(".page-head .muted").first().textContent().catch(() => "");
        if (/base version 2/.test(head || "")) { seen.after = head.replace(/\s+/g, " ").trim(); break; }
        if (Date.now() > deadline) { throw new Error("no base version 2: " + head); }
        await page.waitForTimeout(200);
      }
      seen.outdated = await page.locator('#class-vms tr[data-role="student"] .tag', { hasText: "outdated" }).count();
      if (seen.outdated < 1) { throw new Error("no student VM marked outdated"); }
      await screenshot(page, "teacher-published");
    });
    await step("teacher grants a student extra minutes in the usage table", async () => {
      const row = page.locator(`#hours-usage tr[data-user="${plan.student.user}"]`);
      await row.waitFor({ timeout: 10000 });
      seen.left_before = (await row.locator('[data-f="left"]').textContent()).trim();
      await row.locator("input[data-extra-user]").fill("90");
      await page.locator("#hours-form").getByRole("button", { name: "Save class hours" }).click();
      await page.locator('#hours-form [data-f="result"]').filter({ hasText: "Class hours saved." }).waitFor({ timeout: 10000 });
      const after = page.locator(`#hours-usage tr[data-user="${plan.student.user}"] [data-f="left"]`);
      await after.filter({ hasText: /^11 h/ }).waitFor({ timeout: 10000 });
      seen.left_after = (await after.textContent()).trim();
    });
    await context.close();
  }
  const { context, page } = await browser(plan.student.user);
  await step("the student reverts onto the new base", async () => {
    await open(page, "/portal");
    await revert(page, plan.student.vmid);
    await screenshot(page, `${plan.student.user}-on-new-base`);
  });
  await context.close();
}

async function phaseDelete() {
  const { context, page } = await browser(plan.teacher);
  await step("teacher deletes the class", async () => {
    await open(page, `/classes/${encodeURIComponent(plan.class_id)}`);
    await page.locator('button[data-action="delete"]').click();
    const dialog = page.locator("#delete-dialog");
    await dialog.waitFor({ state: "visible", timeout: 5000 });
    await page.locator("#delete-confirm").fill(plan.class_id);
    await dialog.getByRole("button", { name: "Delete" }).click();
    await page.locator("#class-result").filter({ hasText: /delet/i }).waitFor({ timeout: 20000 });
    seen.result = (await page.locator("#class-result").textContent()).trim();
    await screenshot(page, "teacher-deleting");
    // The page leaves for the class list with a notice naming the class, never for a 404.
    await page.waitForURL((u) => new URL(u).pathname === "/classes", { timeout: 30000 });
    seen.notice = (await page.locator("#classes-notice").textContent({ timeout: 10000 })).trim();
    if (!seen.notice.includes("is being deleted")) { throw new Error("the class list's notice says " + seen.notice); }
    const deadline = Date.now() + 120000;
    for (;;) {
      await page.goto(base + "/classes");
      if (await page.locator(`#classes tr[data-class="${plan.class_id}"]`).count() === 0) { break; }
      if (Date.now() > deadline) { throw new Error("the class is still listed"); }
      await page.waitForTimeout(500);
    }
    await screenshot(page, "teacher-class-gone");
  });
  await context.close();
}

const phases = { cluster: phaseCluster, setup: phaseSetup, students: phaseStudents, terminal: phaseTerminal, publish: phasePublish, delete: phaseDelete };
if (!phases[plan.phase]) { fail("unknown phase " + plan.phase); }
await phases[plan.phase]();
if (problems.length) { fail("problems in the page: " + JSON.stringify(problems)); }
console.log(JSON.stringify({ ok: true, ...seen }));
