// Shared by the browser tests (portal.mjs, terminal.mjs, journey.mjs): the command line, Debian's
// chromium through playwright-core, and one way to launch it (headless, a persistent profile, nothing
// that calls home).
import { existsSync, readFileSync } from "node:fs";

export const CHROMIUM = "/usr/bin/chromium";

/** Prints `<script>: msg` and exits 1. */
export function failer(script) {
  return (msg) => {
    console.error(`${script}: ${msg}`);
    process.exit(1);
  };
}

/** `node tests/browser/<script> <base-url> <plan.json>` → { base, plan }; exits with the usage otherwise. */
export function args(script) {
  const [base, planFile] = process.argv.slice(2);
  if (!base || !planFile) { failer(script)(`usage: node tests/browser/${script} <base-url> <plan.json>`); }
  return { base, plan: JSON.parse(readFileSync(planFile, "utf8")) };
}

/** playwright-core's chromium, or exit 1 naming what to install. */
export async function loadChromium(script) {
  const fail = failer(script);
  if (!existsSync(CHROMIUM)) {
    fail(`${CHROMIUM} is missing: install Debian's chromium (dev/setup does: apt-get install chromium)`);
  }
  try {
    return (await import("playwright-core")).chromium;
  } catch (e) {
    fail("playwright-core is not installed: run `npm ci` in the repository root (dev/setup does) — " + e.message);
  }
}

/** Launches headless chromium on the profile directory `dir` (a persistent context). */
export function launch(chromium, dir, extra = {}) {
  return chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--disable-extensions", "--disable-default-apps", "--no-default-browser-check",
      "--disable-domain-reliability", "--disable-client-side-phishing-detection",
    ],
    viewport: { width: 1280, height: 900 },
    ...extra,
  });
}
