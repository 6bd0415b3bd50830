// Browser test of the SSH terminal page (/ssh/{vmid}, xterm.js): Debian's chromium, headless, driven by
// playwright-core.
//
//   node tests/browser/terminal.mjs <base-url> <plan.json>
//
// plan.json: {"user", "password" (portal account that owns the VM), "vmid", "guest_user", "guest_password"
// (the guest's login, typed into the terminal), "other_user", "other_password" (a student who does not own
// the VM), "artifacts": dir for screenshots, "profile": an empty directory for chromium's user data}.
// Run by core/proxlab/tests/browser_terminal.rs against a real `proxlab serve`, a fake PVE cluster and a
// real OpenSSH sshd on the loopback address the fake's guest agent reports for the VM.
//
// Steps: sign in, open /ssh/{vmid}, log in to the guest through the terminal prompts, run a command whose
// output is non-ASCII (typed as ASCII escapes, so only the output holds the characters) and read it from
// the rendered terminal rows; shrink the browser viewport, then see `stty size`/`tput` report the new,
// smaller size that equals the rendered row count, and a full-screen draw (`tput clear; tput cup` to the
// last line) land on the last rendered row; keep a screenshot (terminal.png). Then the other student
// signs in: /ssh/{vmid} is a 404, a connect token for the VM is refused (404) and the WebSocket does not
// open. Prints one JSON line with what it saw; exits 1 with the reason (and terminal-failure.png) otherwise.
import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { args, failer, launch, loadChromium } from "./common.mjs";

const fail = failer("terminal.mjs");
const { base, plan } = args("terminal.mjs");
const chromium = await loadChromium("terminal.mjs");

mkdirSync(plan.artifacts, { recursive: true });
const context = await launch(chromium, plan.profile);
const page = context.pages()[0] || await context.newPage();
const problems = [];
let expectErrors = false; // the other student's refused requests log "Failed to load resource" / WS errors
page.on("pageerror", (e) => problems.push("page error: " + e.message));
page.on("console", (m) => {
  if (m.type() === "error" && !expectErrors) { problems.push("console error: " + m.text()); }
});
// Nothing may leave the portal's own origin (HTTP and WebSocket alike).
const origin = new URL(base).origin;
await context.route("**/*", (route) => {
  const url = route.request().url();
  if (url.startsWith(origin + "/") || url === origin) { return route.continue(); }
  problems.push("blocked a request to " + url);
  return route.abort();
});
const wsOrigin = origin.replace(/^http/, "ws");
page.on("websocket", (ws) => {
  if (!ws.url().startsWith(wsOrigin + "/")) { problems.push("a WebSocket to " + ws.url()); }
});

const seen = {};

async function step(name, fn) {
  try {
    return await fn();
  } catch (e) {
    try { await page.screenshot({ path: join(plan.artifacts, "terminal-failure.png"), fullPage: true }); } catch (_) { /* ignore */ }
    let screen = "";
    try { screen = (await screenRows()).join("\n"); } catch (_) { /* ignore */ }
    await context.close().catch(() => {});
    fail(`${name}: ${e.message}\nproblems: ${JSON.stringify(problems)}\nseen: ${JSON.stringify(seen)}\nscreen:\n${screen}`);
  }
}

/** The terminal's rendered rows (xterm.js DOM renderer), one string per row, trailing spaces cut. */
async function screenRows() {
  return page.evaluate(() => Array.from(document.querySelectorAll("#terminal .xterm-rows > div"))
    .map((r) => r.textContent.replace(/\u00a0/g, " ").replace(/\s+$/, "")));
}

/** Waits until the rendered screen matches `re` (on the rows joined by "\n"); returns the match. */
async function waitScreen(re, timeout = 20000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const text = (await screenRows()).join("\n");
    const m = text.match(re);
    if (m) { return m; }
    if (Date.now() > deadline) { throw new Error(`the terminal did not show ${re} within ${timeout} ms`); }
    await page.waitForTimeout(100);
  }
}

/** Types into the terminal (xterm.js's focused helper textarea), then Enter. */
async function typeLine(text) {
  await page.locator("#terminal .xterm-helper-textarea").focus();
  await page.keyboard.type(text);
  await page.keyboard.press("Enter");
}

async function signIn(user, password) {
  await page.goto(base + "/portal");
  if (!new URL(page.url()).pathname.startsWith("/login")) { throw new Error("not sent to /login but to " + page.url()); }
  await page.getByLabel("User name").fill(user);
  await page.getByLabel("Password").fill(password);
  await Promise.all([
    page.waitForURL((u) => new URL(u).pathname === "/portal", { timeout: 15000 }),
    page.getByRole("button", { name: "Sign in" }).click(),
  ]);
}

await step("sign in", () => signIn(plan.user, plan.password));

await step("open the terminal page", async () => {
  const r = await page.goto(`${base}/ssh/${plan.vmid}`);
  if (r.status() !== 200) { throw new Error(`/ssh/${plan.vmid} answered ${r.status()}`); }
  seen.csp_terminal = r.headers()["content-security-policy"];
  await page.locator("#terminal .xterm-rows").waitFor({ timeout: 10000 });
});

await step("log in to the guest through the terminal", async () => {
  await waitScreen(/login as:\s*$/m);
  await typeLine(plan.guest_user);
  await waitScreen(/password:\s*$/m);
  await typeLine(plan.guest_password);
  await page.locator('#conn-state[data-state="connected"]').waitFor({ timeout: 20000 });
  await typeLine('echo "LOG""GED-IN"');
  await waitScreen(/^LOGGED-IN$/m);
  const text = (await screenRows()).join("\n");
  if (text.includes(plan.guest_password)) { throw new Error("the guest password is shown in the terminal"); }
});

await step("non-ASCII output", async () => {
  // Grüße ✓ 日本語, typed as octal escapes.
  await typeLine(String.raw`printf 'U8:Gr\303\274\303\237e \342\234\223 \346\227\245\346\234\254\350\252\236\n'`);
  seen.unicode = (await waitScreen(/^U8:.*$/m))[0];
});

await step("resize, then the new size in the shell and a full-screen draw", async () => {
  await typeLine('echo "S1:$(stty size)"');
  const [, r1, c1] = await waitScreen(/^S1:(\d+) (\d+)$/m);
  seen.size_before = { rows: +r1, cols: +c1, rendered_rows: (await screenRows()).length };
  await page.setViewportSize({ width: 860, height: 560 });
  // xterm's fit addon sizes the grid to the smaller viewport (rendered rows change) ...
  await page.waitForFunction((n) => document.querySelectorAll("#terminal .xterm-rows > div").length < n,
    seen.size_before.rendered_rows, { timeout: 10000 });
  await typeLine('echo "S2:$(stty size) $(tput cols) $(tput lines)"');
  const [, r2, c2, tc, tl] = await waitScreen(/^S2:(\d+) (\d+) (\d+) (\d+)$/m);
  const rendered = (await screenRows()).length;
  seen.size_after = { rows: +r2, cols: +c2, tput_cols: +tc, tput_lines: +tl, rendered_rows: rendered };
  if (!(+c2 < +c1 && +r2 < +r1)) { throw new Error("the PTY did not shrink: " + JSON.stringify(seen)); }
  if (+r2 !== rendered || +tl !== rendered || +tc !== +c2) {
    throw new Error("the PTY size differs from the rendered terminal: " + JSON.stringify(seen));
  }
  // A full-screen program: clear the screen and draw on its last line and its last column.
  await typeLine(String.raw`tput clear; tput cup $(($(tput lines)-1)) $(($(tput cols)-3)); printf 'EN''D'; tput cup 0 0; printf 'TO''P'; sleep 30`);
  await page.waitForFunction(() => {
    const rows = Array.from(document.querySelectorAll("#terminal .xterm-rows > div"))
      .map((r) => r.textContent.replace(/\u00a0/g, " "));
    return rows.length > 0 && rows[0].startsWith("TOP") && rows[rows.length - 1].trimEnd().endsWith("END");
  }, null, { timeout: 20000 });
  const rows = await screenRows();
  seen.fullscreen = { first: rows[0], last: rows[rows.length - 1], last_len: rows[rows.length - 1].length };
  if (seen.fullscreen.last_len !== +c2) { throw new Error("END is not in the last column: " + JSON.stringify(seen.fullscreen)); }
  // ... and is drawn there: END's right edge at the screen's right edge, TOP at its left (a broken
  // renderer, e.g. xterm's styles blocked, collapses the spaces and draws END on the left).
  seen.drawn = await page.evaluate(() => {
    const screen = document.querySelector("#terminal .xterm-screen").getBoundingClientRect();
    const rows = document.querySelectorAll("#terminal .xterm-rows > div");
    function box(row, word) {
      const walker = document.createTreeWalker(row, NodeFilter.SHOW_TEXT);
      for (let n = walker.nextNode(); n; n = walker.nextNode()) {
        const i = n.textContent.indexOf(word);
        if (i >= 0) {
          const r = document.createRange();
          r.setStart(n, i);
          r.setEnd(n, i + word.length);
          const b = r.getBoundingClientRect();
          return { left: b.left - screen.left, right: screen.right - b.right, width: b.width };
        }
      }
      return null;
    }
    return { screen_width: screen.width, top: box(rows[0], "TOP"), end: box(rows[rows.length - 1], "END") };
  });
  const cell = seen.drawn.screen_width / +c2;
  if (!seen.drawn.top || !seen.drawn.end || seen.drawn.top.left > cell / 2 || seen.drawn.end.right > cell * 1.5) {
    throw new Error("TOP/END are not drawn at the screen's corners: " + JSON.stringify(seen.drawn) + " cell " + cell);
  }
  const path = join(plan.artifacts, "terminal.png");
  await page.screenshot({ path, fullPage: true });
  seen.screenshot = path;
  await page.keyboard.press("Control+C");
  await typeLine('echo "DO""NE"');
  await waitScreen(/^DONE$/m);
});

await step("the session ends with exit", async () => {
  await typeLine("exit");
  await page.locator('#conn-state[data-state="closed"]').waitFor({ timeout: 20000 });
  seen.closed = (await page.locator("#conn-message").textContent()).trim();
});

await step("another student is refused", async () => {
  await context.clearCookies();
  await signIn(plan.other_user, plan.other_password);
  expectErrors = true;
  const r = await page.goto(`${base}/ssh/${plan.vmid}`);
  seen.other_page = r.status();
  if (r.status() !== 404) { throw new Error(`/ssh/${plan.vmid} for ${plan.other_user} answered ${r.status()}`); }
  if (await page.locator("#terminal-page").count() !== 0) { throw new Error("the terminal page was served"); }
  seen.csp_portal = (await page.goto(base + "/portal")).headers()["content-security-policy"];
  const refused = await page.evaluate(async (vmid) => {
    const csrf = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
    const t = await fetch(`/api/vm/${vmid}/connect-token`, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ purpose: "ssh" }),
    });
    const ws = await new Promise((resolve) => {
      const s = new WebSocket(`${location.origin.replace(/^http/, "ws")}/ws/terminal/${vmid}?token=x`);
      s.onopen = () => { s.close(); resolve("open"); };
      s.onclose = (e) => resolve("closed " + e.code);
    });
    return { token_status: t.status, ws };
  }, plan.vmid);
  seen.other = refused;
  if (refused.token_status !== 404) { throw new Error("connect token for the other student: " + refused.token_status); }
  if (refused.ws === "open") { throw new Error("the WebSocket opened for the other student"); }
  expectErrors = false;
});

await context.close();
if (problems.length) { fail("problems in the page: " + JSON.stringify(problems)); }
console.log(JSON.stringify({ ok: true, ...seen }));
