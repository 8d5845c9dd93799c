// Drives the operator console in Debian's Chromium (playwright-core, no downloaded browser)
// against a live `flotilla serve`; started by crates/cli/tests/it/console/browser.rs, which
// prepares the server, its runs and a paused rollout, and reads this script's exit code.
//
// Environment: BASE (server URL), OPERATOR and VIEWER (API keys), STUCK and STUCK2 (runs
// that sleep for minutes), RED (how many runs carry team=red), SHOTS (screenshot folder),
// AXE (axe.min.js), CHROMIUM (the browser).
"use strict";
const fs = require("fs");
const { chromium } = require("playwright-core");

const env = (k) => {
  const v = process.env[k];
  if (!v) { throw new Error(`${k} is not set`); }
  return v;
};
const BASE = env("BASE");
const SHOTS = env("SHOTS");
const AXE = fs.readFileSync(env("AXE"), "utf8");
const WAIT = { timeout: 60000 };
const pageErrors = [];

function check(ok, what) {
  if (!ok) { throw new Error(`failed: ${what}`); }
  console.log(`ok: ${what}`);
}

// axe-core in the page (evaluated over the DevTools protocol, so the page's CSP stays on);
// no serious or critical violation allowed. Then a full-page screenshot.
async function audit(page, name) {
  await page.evaluate(AXE);
  const found = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 3) }));
  });
  const bad = found.filter((v) => v.impact === "serious" || v.impact === "critical");
  check(bad.length === 0, `${name}: no serious or critical accessibility violation ${JSON.stringify(bad)}`);
  await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}

async function api(path, body) {
  const r = await fetch(BASE + path, {
    method: body ? "POST" : "GET",
    headers: { authorization: `Bearer ${env("OPERATOR")}`, "content-type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  return r.json();
}

async function signIn(context, key) {
  const page = await context.newPage();
  page.on("dialog", (d) => d.accept());
  page.on("pageerror", (e) => pageErrors.push(`${page.url()}: ${e.message}`));
  await page.goto(`${BASE}/ui/runs`);
  check(page.url().includes("/ui/login?next="), "an anonymous visit is sent to sign in");
  await page.getByLabel("API key or token").fill(key);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(/\/ui\/runs$/);
  return page;
}

async function main() {
  fs.mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: env("CHROMIUM"),
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  try {
    const ops = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    // Sign in: the page, then the session cookie's protections.
    const login = await ops.newPage();
    await login.goto(`${BASE}/ui/login`);
    await audit(login, "login");
    await login.close();
    const page = await signIn(ops, env("OPERATOR"));
    const session = (await ops.cookies()).find((c) => c.name === "flotilla_session");
    check(session && session.httpOnly && session.secure && session.sameSite === "Strict", "the session cookie is HttpOnly, Secure, SameSite=Strict");
    check(!(await page.content()).includes(env("OPERATOR")), "the key is not in the page");
    await audit(page, "runs");

    // Filters live in the URL and survive back/forward.
    await page.getByLabel("Status", { exact: true }).selectOption("failed");
    await page.getByRole("button", { name: "Filter" }).click();
    await page.waitForURL(/status=failed/);
    const badges = await page.locator("table.runs tbody .badge").allTextContents();
    check(badges.length > 0 && badges.every((b) => b === "failed"), `only failed runs listed (${badges})`);
    await page.getByLabel("Metadata", { exact: true }).fill("team=red");
    await page.getByLabel("Status", { exact: true }).selectOption("");
    await page.getByRole("button", { name: "Filter" }).click();
    await page.waitForURL(/meta=team%3Dred/);
    const red = await page.locator("table.runs tbody tr").count();
    check(red === Number(env("RED")), `metadata filter: ${red} runs of team red`);
    await page.goBack();
    await page.waitForURL(/status=failed/);
    check(await page.getByLabel("Status", { exact: true }).inputValue() === "failed", "back restores the status filter");
    await page.goForward();
    await page.waitForURL(/meta=team%3Dred/);
    check(await page.getByLabel("Metadata", { exact: true }).inputValue() === "team=red", "forward restores the metadata filter");

    // Live list: a run started elsewhere appears without a reload.
    await page.goto(`${BASE}/ui/runs`);
    await page.evaluate(() => { window.notReloaded = true; });
    const fresh = await api("/api/v1/workflows/pipeline/runs", { input: {}, metadata: { team: "live" } });
    await page.locator(`a[href^="/ui/runs/${fresh.run_id}"]`).waitFor(WAIT);
    check(await page.evaluate(() => window.notReloaded === true), "a new run appears in the list without a reload");
    // The switch pauses it.
    await page.getByLabel("Live updates").uncheck();
    const paused = await api("/api/v1/workflows/pipeline/runs", { input: {}, metadata: {} });
    await page.waitForTimeout(3000);
    check(await page.locator(`a[href^="/ui/runs/${paused.run_id}"]`).count() === 0, "paused: the list stays as it was");
    await page.getByLabel("Live updates").check();
    await page.locator(`a[href^="/ui/runs/${paused.run_id}"]`).waitFor(WAIT);
    check(true, "resumed: the list catches up");

    // A running run turns green on its page without a reload.
    const slow = await api("/api/v1/workflows/slow/runs", { input: {}, metadata: {} });
    await page.goto(`${BASE}/ui/runs/${slow.run_id}`);
    const status = page.locator("#run-status");
    check(["queued", "running"].includes(await status.textContent()), "the slow run is still going when its page opens");
    await page.evaluate(() => { window.notReloaded = true; });
    await page.locator("#run-status", { hasText: "succeeded" }).waitFor(WAIT);
    check(await page.evaluate(() => window.notReloaded === true), "the run turned succeeded live, without a reload");
    check(await page.locator("svg.dag .node").count() === 2 && await page.locator("svg.gantt rect.bar").count() === 2, "DAG and timeline drawn");
    await audit(page, "run");

    // A finished run of the diamond, with its graph, critical path and output.
    const runs = await api("/api/v1/runs?workflow=pipeline&status=succeeded&limit=1");
    await page.goto(`${BASE}/ui/runs/${runs.runs[0].id}`);
    check(await page.locator("svg.dag .node").count() === 4, "four steps in the DAG");
    check(await page.locator("svg.dag .node.critical").count() === 3, "the critical path has three steps");
    await page.getByText("Output of report").click();
    check(await page.locator("#out-report pre").isVisible(), "a step's output opens");
    await audit(page, "run-dag");

    // Cancel a run from its page (a confirmation first).
    await page.goto(`${BASE}/ui/runs/${env("STUCK")}`);
    await page.getByRole("button", { name: "Cancel run" }).click();
    await page.locator("#run-status", { hasText: "cancelled" }).waitFor(WAIT);
    check(true, "the run is cancelled");

    // The circuit of the failing agent shows open.
    await page.goto(`${BASE}/ui/agents`);
    await page.locator("#agent-flaky [data-circuit=open]").waitFor(WAIT);
    check((await page.locator("#agent-flaky").textContent()).includes("probe in"), "an open circuit says when it probes again");
    await audit(page, "agents");

    // Evaluate a flag.
    await page.goto(`${BASE}/ui/flags`);
    await page.getByLabel("Flag", { exact: true }).selectOption("gold_tier");
    await page.getByLabel(/Context/).fill('{"user_id": "u1", "tier": "gold"}');
    await page.getByRole("button", { name: "Evaluate" }).click();
    const verdict = await page.locator("#evaluation").textContent();
    check(verdict.includes("gold_tier is on") && verdict.includes("TargetingMatch"), `evaluated: ${verdict}`);
    await audit(page, "flags");

    // Promote the paused rollout; its page follows it to the end.
    await page.goto(`${BASE}/ui/rollouts`);
    await audit(page, "rollouts");
    await page.getByRole("link", { name: "api" }).click();
    await page.locator("#rollout-status", { hasText: "paused" }).waitFor(WAIT);
    check(await page.locator(".charts svg.spark").count() > 0, "measurements are charted");
    await audit(page, "rollout");
    await page.getByRole("button", { name: "Promote" }).click();
    await page.locator("#rollout-status", { hasText: "promoted" }).waitFor({ timeout: 120000 });
    check((await page.locator("#rollout-weight").textContent()).trim() === "100%", "promoted: all traffic on the new version");
    await page.screenshot({ path: `${SHOTS}/rollout-promoted.png`, fullPage: true });

    // A viewer sees no cancel button, and the POST is refused.
    const viewer = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const vpage = await signIn(viewer, env("VIEWER"));
    await vpage.goto(`${BASE}/ui/runs/${env("STUCK2")}`);
    check(await vpage.getByRole("button", { name: "Cancel run" }).count() === 0, "no cancel button for a viewer");
    const csrf = await vpage.locator("input[name=csrf]").first().inputValue();
    const refused = await vpage.request.post(`${BASE}/ui/runs/${env("STUCK2")}/cancel`, { form: { csrf }, maxRedirects: 0 });
    check(refused.status() === 403, `a viewer's cancel is refused (${refused.status()})`);

    // A phone-width screen: nothing wider than the screen but the tables' own scroll.
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    const ppage = await signIn(phone, env("OPERATOR"));
    const overflow = await ppage.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 1, `the runs page fits a phone (${overflow}px over)`);
    await audit(ppage, "runs-phone");
    await ppage.goto(`${BASE}/ui/runs/${env("STUCK2")}`);
    check(await ppage.evaluate(() => document.documentElement.scrollWidth - window.innerWidth) <= 1, "a run's page fits a phone");
    await audit(ppage, "run-phone");

    // Keyboard: the skip link is the first stop and leads to the content.
    await ppage.keyboard.press("Tab");
    check(await ppage.evaluate(() => document.activeElement.textContent) === "Skip to content", "the first tab stop skips to the content");
    check(pageErrors.length === 0, `no script error in any page ${JSON.stringify(pageErrors)}`);
  } finally {
    await browser.close();
  }
}

main().then(() => { console.log("console browser test passed"); }, (e) => { console.error(e.stack || String(e)); process.exit(1); });
