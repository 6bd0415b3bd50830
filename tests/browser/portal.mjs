// Browser test of the student portal: Debian's chromium, headless, driven by playwright-core.
//
//   node tests/browser/portal.mjs <base-url> <plan.json>
//
// plan.json: {"user", "password", "own": [VM names the student must see], "others": [names they must
// not see], "vm": name of the stopped VM to start and revert, "artifacts": dir for screenshots,
// "profile": an empty directory for chromium's user data, optionally "locked_vm" (a running VM that PVE
// has locked) and "locked_error" (the text the title of its disabled buttons must show)}.
// Run by core/proxlab/tests/browser_portal.rs against a real `proxlab serve` and a fake PVE cluster.
//
// Steps: sign in through the form (redirected from /portal), check the list, start the VM, see it go
// to running and its IP appear WITHOUT a reload (live updates over SSE), open the Connect menu,
// keep a screenshot, revert through the confirmation dialog, see it stopped again; a VM that PVE has
// locked has its buttons disabled with the lock named. Prints one JSON
// line with what it saw; exits 1 with the reason (and a failure screenshot) otherwise.
import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { args, failer, launch, loadChromium } from "./common.mjs";

const fail = failer("portal.mjs");
const { base, plan } = args("portal.mjs");
const chromium = await loadChromium("portal.mjs");

mkdirSync(plan.artifacts, { recursive: true });
// A fresh profile per run (the caller passes an empty temporary directory).
const userDataDir = plan.profile || join(plan.artifacts, "chromium-profile-" + process.pid);
const context = await launch(chromium, userDataDir);
const page = context.pages()[0] || await context.newPage();
const problems = [];
page.on("pageerror", (e) => problems.push("page error: " + e.message));
// Script errors are problems; an HTTP error answer to a fetch (the locked VM's 409) is logged by chromium as
// "Failed to load resource" and shown on the card, which the steps check.
page.on("console", (m) => {
  if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) { problems.push("console error: " + m.text()); }
});
// Nothing may leave the portal's own origin.
const origin = new URL(base).origin;
await context.route("**/*", (route) => {
  const url = route.request().url();
  if (url.startsWith(origin + "/") || url === origin) { return route.continue(); }
  problems.push("blocked a request to " + url);
  return route.abort();
});

const seen = {};
const t0 = Date.now();
const since = () => Date.now() - t0;

async function step(name, fn) {
  try {
    return await fn();
  } catch (e) {
    try { await page.screenshot({ path: join(plan.artifacts, "portal-failure.png"), fullPage: true }); } catch (_) { /* ignore */ }
    await context.close().catch(() => {});
    fail(`${name}: ${e.message}\nproblems: ${JSON.stringify(problems)}\nseen: ${JSON.stringify(seen)}`);
  }
}

function card(name) {
  return page.locator(".vm-card").filter({ has: page.locator(".vm-name", { hasText: name }) });
}

await step("sign in", async () => {
  await page.goto(base + "/portal");
  if (!new URL(page.url()).pathname.startsWith("/login")) { throw new Error("not sent to /login but to " + page.url()); }
  seen.login_url = new URL(page.url()).pathname + new URL(page.url()).search;
  await page.getByLabel("User name").fill(plan.user);
  await page.getByLabel("Password").fill(plan.password);
  await Promise.all([
    page.waitForURL((u) => new URL(u).pathname === "/portal", { timeout: 15000 }),
    page.getByRole("button", { name: "Sign in" }).click(),
  ]);
});

await step("only the student's VMs", async () => {
  const names = (await page.locator(".vm-card .vm-name").allTextContents()).map((s) => s.trim()).sort();
  seen.names = names;
  const want = [...plan.own].sort();
  if (JSON.stringify(names) !== JSON.stringify(want)) {
    throw new Error(`cards ${JSON.stringify(names)}, expected ${JSON.stringify(want)}`);
  }
  for (const other of plan.others) {
    if ((await page.content()).includes(other)) { throw new Error(`page shows another student's VM ${other}`); }
  }
  // Mark this document: a reload would lose the mark.
  await page.evaluate(() => { window.__proxlabNoReload = 1; });
  await page.waitForSelector('#live[data-state="open"]', { timeout: 10000 });
});

const vm = card(plan.vm);

await step("start, running and IP without reload", async () => {
  await vm.locator('[data-f="state"]').filter({ hasText: "stopped" }).waitFor({ timeout: 5000 });
  await vm.getByRole("button", { name: "Start" }).click();
  await vm.locator('[data-f="state"]').filter({ hasText: "running" }).waitFor({ timeout: 30000 });
  seen.running_after_ms = since();
  await vm.locator('[data-f="result"]').filter({ hasText: "Start: done" }).waitFor({ timeout: 30000 });
  await page.waitForFunction(
    (name) => {
      for (const c of document.querySelectorAll(".vm-card")) {
        if (c.querySelector(".vm-name").textContent.trim() === name) {
          return /^\d{1,3}(\.\d{1,3}){3}$/.test(c.querySelector('[data-f="ip"]').textContent.trim());
        }
      }
      return false;
    },
    plan.vm,
    { timeout: 60000 },
  );
  seen.ip = (await vm.locator('[data-f="ip"]').textContent()).trim();
  seen.ip_after_ms = since();
  if (await page.evaluate(() => window.__proxlabNoReload) !== 1) { throw new Error("the page reloaded"); }
});

await step("connect menu", async () => {
  await vm.locator("summary", { hasText: "Connect" }).click();
  const body = vm.locator('[data-f="connect"]');
  await body.locator(".connect-list").waitFor({ timeout: 10000 });
  await body.getByText(seen.ip).first().waitFor({ timeout: 10000 });
  seen.connect = (await body.locator(".connect-item").allTextContents()).map((s) => s.trim());
  if (!seen.connect.some((t) => t.startsWith("Console"))) { throw new Error("no console entry: " + seen.connect); }
});

await step("screenshot", async () => {
  const path = join(plan.artifacts, "portal.png");
  await page.screenshot({ path, fullPage: true });
  seen.screenshot = path;
  await vm.locator("summary", { hasText: "Connect" }).click();
});

await step("revert with confirmation", async () => {
  await vm.getByRole("button", { name: "Revert" }).click();
  const dialog = page.locator("#revert-dialog");
  await dialog.waitFor({ state: "visible", timeout: 5000 });
  seen.dialog = (await dialog.textContent()).replace(/\s+/g, " ").trim();
  await page.locator("#revert-confirm").click();
  await vm.locator('[data-f="result"]').filter({ hasText: "Revert: done" }).waitFor({ timeout: 30000 });
  // It says what comes next: a VM reverted to a stopped snapshot needs Start.
  seen.revert_result = (await vm.locator('[data-f="result"]').textContent()).trim();
  if (!seen.revert_result.includes("The VM is stopped: press Start to use it.")) {
    throw new Error("the revert result does not say what comes next: " + seen.revert_result);
  }
  await vm.locator('[data-f="state"]').filter({ hasText: "stopped" }).waitFor({ timeout: 30000 });
  seen.reverted_after_ms = since();
  if (await page.evaluate(() => window.__proxlabNoReload) !== 1) { throw new Error("the page reloaded"); }
  await page.screenshot({ path: join(plan.artifacts, "portal-after-revert.png"), fullPage: true });
});

if (plan.locked_vm) {
  await step("a VM Proxmox has locked has every button disabled, saying why", async () => {
    const locked = card(plan.locked_vm);
    await locked.locator('[data-f="lock"]').filter({ hasText: "backup" }).waitFor({ timeout: 15000 });
    const stop = locked.getByRole("button", { name: "Stop" });
    if (await stop.isEnabled()) { throw new Error("Stop is enabled on a VM Proxmox has locked"); }
    if (await locked.getByRole("button", { name: "Start" }).isEnabled()) { throw new Error("Start is enabled on a locked VM"); }
    seen.locked_result = await stop.getAttribute("title");
    if (!seen.locked_result || !seen.locked_result.includes(plan.locked_error)) {
      throw new Error("the disabled Stop does not say why: " + seen.locked_result);
    }
  });
}

await context.close();
if (problems.length) { fail("problems in the page: " + JSON.stringify(problems)); }
console.log(JSON.stringify({ ok: true, ...seen }));
