// The replication view in a real browser (issue #18): logs in, opens the page of a running job
// (two disks, bandwidth-limited) and watches — without reloading — its overall progress, its
// ETA and its per-disk rows change, the phase checklist advance, and the page flip to the
// final state at completion (no "Cancel run", "1 completed run", every phase done, the disks'
// SHA-256 shown). Then the page of a job that fails must show the error's code, message and
// what to do. Screenshots go to GODWIT_SCREENSHOTS; the dashboard during the replication and
// the job page are also written to GODWIT_README_IMAGES when set (the README's pictures).
//
// Configuration by environment:
//   GODWIT_URL, GODWIT_ADMIN_PASSWORD
//   GODWIT_JOB             id of the running two-disk job
//   GODWIT_FAILING_JOB     id of a job that fails (its VM's disk files are empty)
//   GODWIT_SCREENSHOTS     directory for the PNGs (created)
//   GODWIT_README_IMAGES   optional directory for dashboard.png and job-page.png
//   CHROMIUM               browser binary (default /usr/bin/chromium)
// On success prints `RESULT {json}` (what was observed) and exits 0; else exits 1 with the
// reason (and a screenshot "failure.png").

import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

function env(name, fallback) {
  const v = process.env[name];
  if (v === undefined || v === "") {
    if (fallback === undefined) throw new Error(`environment variable ${name} is required`);
    return fallback;
  }
  return v;
}

const cfg = {
  url: env("GODWIT_URL").replace(/\/$/, ""),
  password: env("GODWIT_ADMIN_PASSWORD"),
  job: env("GODWIT_JOB"),
  failingJob: env("GODWIT_FAILING_JOB"),
  shots: env("GODWIT_SCREENSHOTS"),
  readme: process.env.GODWIT_README_IMAGES || "",
  chromium: env("CHROMIUM", "/usr/bin/chromium"),
  timeoutMs: Number(env("GODWIT_JOB_TIMEOUT_S", "120")) * 1000,
};

fs.mkdirSync(cfg.shots, { recursive: true });
let shotNo = 0;
async function shot(page, name, readmeName) {
  shotNo += 1;
  const file = path.join(cfg.shots, `${String(shotNo).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot ${file}`);
  if (readmeName && cfg.readme) {
    fs.mkdirSync(cfg.readme, { recursive: true });
    // Viewport only, so the README images stay small.
    await page.screenshot({ path: path.join(cfg.readme, readmeName), fullPage: false });
  }
}

function fail(msg) {
  throw new Error(msg);
}

const text = async (page, sel) => ((await page.locator(sel).first().textContent()) || "").trim();

async function main() {
  const browser = await chromium.launch({
    executablePath: cfg.chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  const scriptErrors = [];
  page.on("pageerror", (e) => { scriptErrors.push(e.message); console.log(`page script error: ${e.message}`); });
  const result = { progress: [], eta: [], disk0: [], disk1: [], phases: [] };
  try {
    await page.goto(cfg.url + "/login");
    const form = page.locator('form[action="/login"]');
    await form.locator("#password").fill(cfg.password);
    await Promise.all([page.waitForLoadState("load"), form.getByRole("button", { name: "Log in" }).click()]);

    // The dashboard during the replication: the job's row moves.
    await page.goto(cfg.url + "/");
    const row = page.locator(`tr[data-job-id="${cfg.job}"]`);
    await row.waitFor({ timeout: 10000 }).catch(() => fail("the job is not on the dashboard"));
    const dashSeen = new Set();
    const dashDeadline = Date.now() + 15000;
    while (dashSeen.size < 2 && Date.now() < dashDeadline) {
      dashSeen.add((await row.locator('[data-field="progress"]').textContent()).trim());
      await page.waitForTimeout(700);
    }
    if (dashSeen.size < 2) fail(`the dashboard row did not move: ${[...dashSeen]}`);
    const replState = (await row.locator('[data-field="replication_state"]').textContent()).trim();
    if (replState !== "initial sync") fail(`the dashboard says "${replState}" during the first sync`);
    const title = await row.locator('[data-field="replication_state"]').getAttribute("title");
    if (!title || title.length < 20) fail("the replication state has no explanation on hover");
    await shot(page, "dashboard-running", "dashboard.png");

    // The job page: the same document is watched until the run completes (no reload).
    await page.goto(cfg.url + `/jobs/${encodeURIComponent(cfg.job)}`);
    await page.evaluate(() => { window.__godwitSamePage = true; });
    if (await page.locator("#cancel-form").isHidden()) fail("a running job shows no Cancel run");
    const deadline = Date.now() + cfg.timeoutMs;
    let shotMid = false;
    for (;;) {
      const state = await text(page, '#job [data-field="state"]');
      const prog = await text(page, "#job-progress-text");
      const eta = await text(page, "#job-eta");
      const d0 = await page.locator('#disks tr[data-disk="0"] [data-field="progress"]').textContent().catch(() => "");
      const d1 = await page.locator('#disks tr[data-disk="1"] [data-field="progress"]').textContent().catch(() => "");
      const phases = await page.locator("#phases li.done").count();
      const push = (list, v) => { if (v && list[list.length - 1] !== v) list.push(v.trim()); };
      if (state === "transferring") {
        push(result.progress, prog);
        if (/\d/.test(eta)) push(result.eta, eta);
        push(result.disk0, d0);
        push(result.disk1, d1);
        if (!shotMid && result.progress.length >= 2) {
          await shot(page, "job-running", "job-page.png");
          shotMid = true;
        }
      }
      if (!result.phases.length || result.phases[result.phases.length - 1] !== phases) result.phases.push(phases);
      if (state === "completed") break;
      if (state === "failed" || state === "waiting to retry") fail(`the job failed: ${await text(page, "#job-error")}`);
      if (Date.now() > deadline) fail(`the job did not complete (state ${state}, ${prog})`);
      await page.waitForTimeout(400);
    }
    if (!(await page.evaluate(() => window.__godwitSamePage === true))) fail("the page was reloaded");
    if (result.progress.length < 3) fail(`the progress was seen at only ${result.progress.length} values: ${result.progress}`);
    if (result.eta.length < 2) fail(`the ETA did not change while watched: ${result.eta}`);
    if (result.disk0.length < 2 || result.disk1.length < 2) fail(`the disk rows did not both move: ${JSON.stringify([result.disk0, result.disk1])}`);

    // The final state, in place.
    const waitFor = async (what, ok) => {
      const until = Date.now() + 10000;
      while (!(await ok())) {
        if (Date.now() > until) fail(`after completion: ${what}`);
        await page.waitForTimeout(300);
      }
    };
    await waitFor("Cancel run still shown", async () => page.locator("#cancel-form").isHidden());
    await waitFor("Run now not shown", async () => page.locator("#run-form").isVisible());
    await waitFor("runs completed not 1", async () => (await text(page, "#runs-completed")) === "1 completed run");
    await waitFor("progress not at 100 %", async () => (await text(page, "#job-progress-text")).startsWith("100 %"));
    await waitFor("not every phase done", async () =>
      (await page.locator("#phases li").count()) === 5 && (await page.locator("#phases li.done").count()) === 5);
    await waitFor("replication state not paused", async () => (await text(page, "#replication-state")) === "paused");
    await waitFor("the history does not say the run completed", async () => (await text(page, "#history")).includes("run completed"));
    result.sha256 = [];
    for (const i of [0, 1]) {
      const sha = await text(page, `#disks tr[data-disk="${i}"] [data-field="sha256"]`);
      const st = await text(page, `#disks tr[data-disk="${i}"] [data-field="state"]`);
      if (!/^[0-9a-f]{64}$/.test(sha)) fail(`disk ${i} shows no SHA-256 (${sha})`);
      if (st !== "done") fail(`disk ${i} is ${st}`);
      result.sha256.push(sha);
    }
    result.lag = await text(page, "#job-lag");
    if (!/\d+ (s|min)/.test(result.lag)) fail(`the lag reads "${result.lag}"`);
    if (!(await page.locator("#job-error").isHidden())) fail("a good run shows an error");
    const chart = await page.locator("#job-throughput").evaluate((img) => img.naturalWidth);
    if (!(chart > 0)) fail("the throughput chart did not load");
    await shot(page, "job-completed");

    // A failing job: what happened, its code, and what to do.
    await page.goto(cfg.url + `/jobs/${encodeURIComponent(cfg.failingJob)}`);
    const box = page.locator("#job-error");
    await box.waitFor({ state: "visible", timeout: cfg.timeoutMs }).catch(() => fail("the failing job shows no error"));
    result.error = {
      code: await text(page, "#job-error-code"),
      message: await text(page, "#job-error-message"),
      remediation: await text(page, "#job-error-remediation"),
      state: await text(page, "#replication-state"),
    };
    if (!result.error.remediation) fail("the error has no remediation");
    if (/127\.0\.0\.1|--[a-z]/.test(result.error.message + result.error.remediation)) fail(`the error is not readable: ${JSON.stringify(result.error)}`);
    if (!(await page.locator("#cancel-form").isHidden())) fail("a failed job shows Cancel run");
    await shot(page, "job-failed");

    // The log page lists the failure with its code.
    await page.goto(cfg.url + "/logs");
    result.logFailures = await text(page, "#failures").catch(() => "");
    await shot(page, "logs");
    if (scriptErrors.length) fail(`page script errors: ${scriptErrors}`);
    console.log("RESULT " + JSON.stringify(result));
  } catch (e) {
    console.log(`FAILED: ${e.message}`);
    console.log("OBSERVED " + JSON.stringify(result));
    await page.screenshot({ path: path.join(cfg.shots, "failure.png"), fullPage: true }).catch(() => {});
    await browser.close();
    process.exit(1);
  }
  await browser.close();
}

main();
