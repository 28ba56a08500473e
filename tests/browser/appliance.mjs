// The whole migration in the booted appliance, as its operator does it in a browser: the
// first-run wizard from the first page (setup code from the console), network, staging target,
// two sources (a vCenter and a Hyper-V host, each certificate approved), checks; then one job per
// source started from the inventory (both replicate at once), an export of each, and the
// download of each export through the browser. A screenshot of every step goes to
// GODWIT_SCREENSHOTS. Driven by tests/tests/image_e2e.rs against qemu (user network).
//
// playwright-core drives Debian's chromium (no browser download). Configuration by environment:
//   GODWIT_URL                 the appliance's setup page through qemu's forwarded port
//   GODWIT_SETUP_CODE          the setup code read from the serial console
//   GODWIT_ADMIN_PASSWORD      the password to set
//   GODWIT_NTP                 the NTP server for the network step (host:port)
//   GODWIT_STAGING_ADDRESS, GODWIT_STAGING_FINGERPRINT, GODWIT_STAGING_TOKEN
//   GODWIT_VSPHERE_ADDRESS, GODWIT_VSPHERE_USER, GODWIT_VSPHERE_PASSWORD, GODWIT_VSPHERE_VM
//   GODWIT_HYPERV_ADDRESS, GODWIT_HYPERV_USER, GODWIT_HYPERV_PASSWORD, GODWIT_HYPERV_VM
//   GODWIT_SCREENSHOTS, GODWIT_DOWNLOADS   directories (created)
//   GODWIT_INGEST_URL          optional: where Hyper-V hosts push (PUT /api/v1/settings/ingest);
//                              the status of that call is reported (404 where the route is absent)
//   GODWIT_JOB_TIMEOUT_S       how long the jobs and exports may take (default 600)
//   CHROMIUM                   browser binary (default /usr/bin/chromium)
// Prints `RESULT {json}` (jobs, their start and end times, exports, downloaded files) and
// exits 0; any failed expectation exits 1 with the reason (and "failure.png").

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
  setupCode: env("GODWIT_SETUP_CODE"),
  password: env("GODWIT_ADMIN_PASSWORD"),
  ntp: env("GODWIT_NTP"),
  staging: [env("GODWIT_STAGING_ADDRESS"), env("GODWIT_STAGING_FINGERPRINT"), env("GODWIT_STAGING_TOKEN")],
  sources: [
    { kind: "vsphere", address: env("GODWIT_VSPHERE_ADDRESS"), user: env("GODWIT_VSPHERE_USER"),
      password: env("GODWIT_VSPHERE_PASSWORD"), vm: env("GODWIT_VSPHERE_VM"), format: "vmdk" },
    { kind: "hyperv", address: env("GODWIT_HYPERV_ADDRESS"), user: env("GODWIT_HYPERV_USER"),
      password: env("GODWIT_HYPERV_PASSWORD"), vm: env("GODWIT_HYPERV_VM"), format: "vhdx" },
  ],
  shots: env("GODWIT_SCREENSHOTS"),
  downloads: env("GODWIT_DOWNLOADS"),
  timeoutMs: Number(env("GODWIT_JOB_TIMEOUT_S", "600")) * 1000,
  chromium: env("CHROMIUM", "/usr/bin/chromium"),
};
const secrets = [cfg.password, cfg.staging[2], ...cfg.sources.map((s) => s.password)];

fs.mkdirSync(cfg.shots, { recursive: true });
fs.mkdirSync(cfg.downloads, { recursive: true });
let shotNo = 0;
async function shot(page, name) {
  shotNo += 1;
  const file = path.join(cfg.shots, `${String(shotNo).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot ${file}`);
}

function fail(msg) {
  throw new Error(msg);
}

async function expectPath(page, want) {
  await page.waitForURL((u) => new URL(u).pathname === want, { timeout: 60000 }).catch(() => {
    fail(`expected to be on ${want}, but the browser is on ${page.url()}`);
  });
}

async function expectNoSecrets(page) {
  const html = await page.content();
  for (const s of secrets) {
    if (s && html.includes(s)) fail(`a secret value appears in ${page.url()}`);
  }
}

async function submit(page, form, buttonText) {
  await Promise.all([
    page.waitForLoadState("load"),
    form.getByRole("button", { name: buttonText }).click(),
  ]);
}

// The session's JSON API (cookies shared with the page); network errors retried (the
// appliance's interface is reconfigured after the network step).
async function api(page, p) {
  for (let i = 0; ; i++) {
    try {
      const r = await page.request.get(cfg.url + p, { timeout: 30000 });
      if (r.ok()) return await r.json();
      if (i > 5) fail(`GET ${p}: HTTP ${r.status()}`);
    } catch (e) {
      if (i > 30) throw e;
    }
    await page.waitForTimeout(1000);
  }
}

async function main() {
  const browser = await chromium.launch({
    executablePath: cfg.chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    acceptDownloads: true,
    viewport: { width: 1200, height: 900 },
  });
  const page = await context.newPage();
  page.setDefaultTimeout(60000);
  page.on("pageerror", (e) => console.log(`page script error: ${e.message}`));
  page.on("dialog", (d) => d.accept());
  const result = { jobs: {}, exports: {} };
  try {
    // 1. The first page: the admin password, unlocked by the setup code from the console.
    await page.goto(cfg.url + "/");
    await expectPath(page, "/setup/password");
    await shot(page, "password");
    let form = page.locator('form[action="/setup/password"]');
    await form.locator("#setup_code").fill(cfg.setupCode);
    await form.locator("#new_password").fill(cfg.password);
    await form.locator("#confirm_password").fill(cfg.password);
    await submit(page, form, "Save and continue");

    // 2. Network: DHCP, the test's NTP server; applied to the appliance at once. (With vApp
    // properties applied at boot the wizard goes on to the staging step; the network step is
    // still there to change them.)
    await page.waitForURL((u) => ["/setup/network", "/setup/staging"].includes(new URL(u).pathname));
    if (new URL(page.url()).pathname !== "/setup/network") await page.goto(cfg.url + "/setup/network");
    await expectPath(page, "/setup/network");
    form = page.locator('form[action="/setup/network"]');
    await form.locator("#hostname").fill("godwit-e2e");
    await form.locator('input[name="mode"][value="dhcp"]').check();
    await form.locator("#dns_servers").fill("");
    await form.locator("#ntp_servers").fill(cfg.ntp);
    await shot(page, "network");
    await submit(page, form, "Save and continue");
    await expectPath(page, "/setup/staging");
    for (let i = 0; ; i++) {
      const st = (await api(page, "/api/v1/settings")).network_status;
      if (st && st.state !== "applying") {
        if (st.state !== "applied") fail(`network settings ${st.state}: ${st.message}`);
        console.log(`network: ${st.message}`);
        break;
      }
      if (i > 60) fail("the network settings were not applied within a minute");
      await page.waitForTimeout(1000);
    }

    // 3. Staging target.
    await page.goto(cfg.url + "/setup/staging");
    form = page.locator('form[action="/setup/staging"]');
    await form.locator('input[name="kind"][value="server"]').check();
    await form.locator("#address").fill(cfg.staging[0]);
    await form.locator("#fingerprint").fill(cfg.staging[1]);
    await form.locator("#token").fill(cfg.staging[2]);
    await shot(page, "staging");
    await submit(page, form, "Save and continue");

    // 4. Sources: each certificate shown, compared and approved explicitly.
    for (const src of cfg.sources) {
      await expectPath(page, "/setup/sources");
      form = page.locator('form[action="/setup/sources/probe"]');
      await form.locator("#kind").selectOption(src.kind);
      await form.locator("#address").fill(src.address);
      await submit(page, form, "Connect and show certificate");
      const fp = (await page.locator("#probed-fingerprint").textContent({ timeout: 60000 })).trim();
      if (!/^SHA256:/.test(fp)) fail(`the probed certificate fingerprint looks wrong: ${fp}`);
      console.log(`${src.kind} certificate ${fp}`);
      await shot(page, `${src.kind}-certificate`);
      form = page.locator('form[action="/setup/sources/add"]');
      await form.locator("#approve").check();
      await form.locator("#username").fill(src.user);
      await form.locator("#password").fill(src.password);
      await submit(page, form, "Approve and add");
      await expectPath(page, "/setup/sources");
      if ((await page.locator(".alert").count()) > 0) {
        await shot(page, `${src.kind}-refused`);
        fail(`adding ${src.kind} ${src.address}: ${await page.locator(".alert").textContent()}`);
      }
      await page.locator("table", { hasText: src.address }).waitFor({ timeout: 10000 })
        .catch(() => fail(`the ${src.kind} source is not listed`));
    }
    await shot(page, "sources");
    await expectNoSecrets(page);
    if (process.env.GODWIT_INGEST_URL) {
      // The hosts reach the appliance through qemu's forwarded port, not at its own address.
      const s = await (await page.request.get(cfg.url + "/api/v1/session")).json();
      const r = await page.request.put(cfg.url + "/api/v1/settings/ingest", {
        headers: { "x-csrf-token": s.csrf_token },
        data: { url: process.env.GODWIT_INGEST_URL },
      });
      result.ingest_status = r.status();
      console.log(`PUT /api/v1/settings/ingest: HTTP ${r.status()}`);
    }
    await Promise.all([page.waitForLoadState("load"), page.getByRole("link", { name: "Continue" }).click()]);

    // 5. Checks, then finish.
    await expectPath(page, "/setup/checks");
    form = page.locator('form[action="/setup/checks"]');
    await submit(page, form, "Run the checks");
    await page.locator("table.checks").waitFor({ timeout: 120000 }).catch(() => fail("no check results shown"));
    await shot(page, "checks");
    form = page.locator('form[action="/setup/finish"]');
    await submit(page, form, "Finish setup");
    // A failed check (e.g. a host this network cannot resolve) asks to confirm first.
    if ((await page.locator("#finish-confirm").count()) > 0) {
      console.log("finish setup: confirmed with a failed check");
      await submit(page, page.locator("#finish-confirm form"), "Finish setup anyway");
    }
    await expectPath(page, "/setup/done");
    await shot(page, "done");

    // 6. One job per source from the inventory, the slower (Hyper-V) one first, so both
    // replicate at once.
    for (const src of [cfg.sources[1], cfg.sources[0]]) {
      await page.goto(cfg.url + "/inventory");
      const row = page.locator("table.inventory tbody tr", { hasText: src.vm }).first();
      await row.waitFor({ timeout: 120000 }).catch(() => fail(`VM ${src.vm} is not in the inventory`));
      if (src === cfg.sources[1]) await shot(page, "inventory");
      const jobForm = row.locator('form[action="/jobs"]');
      await jobForm.locator('select[name="schedule"]').selectOption("once");
      const started = Date.now();
      await submit(page, jobForm, "Replicate");
      await page.waitForURL(/\/jobs\/[^/]+$/, { timeout: 60000 }).catch(() => fail(`creating the ${src.kind} job did not open it`));
      const id = decodeURIComponent(new URL(page.url()).pathname.split("/").pop());
      result.jobs[src.kind] = { id, vm: src.vm, started_ms: started };
      console.log(`${src.kind} job ${id}`);
    }

    // 7. Both jobs to completion (the job pages and the dashboard along the way).
    const deadline = Date.now() + cfg.timeoutMs;
    let both = false;
    for (;;) {
      const jobs = await api(page, "/api/v1/jobs");
      const running = jobs.filter((j) => ["snapshotting", "transferring", "removing_snapshot"].includes(j.state));
      if (running.length === 2 && !both) {
        both = true;
        await page.goto(cfg.url + "/");
        await shot(page, "both-jobs-running");
      }
      for (const [kind, j] of Object.entries(result.jobs)) {
        const now = jobs.find((x) => x.id === j.id);
        if (!now) fail(`job ${j.id} is gone`);
        // A once-job that waits for a retry has already failed a run: report it now, not after
        // the deadline (a first run in this test has no reason to fail).
        if (now.state === "failed" || now.state === "retry_wait") {
          await page.goto(cfg.url + `/jobs/${encodeURIComponent(j.id)}`);
          await shot(page, `${kind}-job-failed`);
          fail(`the ${kind} job failed: ${now.last_error}`);
        }
        if (now.state === "completed" && !j.completed_ms) {
          j.completed_ms = Date.now();
          console.log(`${kind} job completed after ${(j.completed_ms - j.started_ms) / 1000} s`);
          await page.goto(cfg.url + `/jobs/${encodeURIComponent(j.id)}`);
          await shot(page, `${kind}-job-complete`);
        }
      }
      if (Object.values(result.jobs).every((j) => j.completed_ms)) break;
      if (Date.now() > deadline) fail(`the jobs did not complete: ${JSON.stringify(jobs)}`);
      await page.waitForTimeout(1000);
    }
    result.both_running_seen = both;
    await page.goto(cfg.url + "/");
    await shot(page, "dashboard");

    // 8. An export of each replica, to a file on the appliance; wait for both.
    for (const src of cfg.sources) {
      await page.goto(cfg.url + "/exports");
      form = page.locator('form[action="/exports"]');
      await form.locator("#job_id").selectOption(result.jobs[src.kind].id);
      await form.locator("#format").selectOption(src.format);
      const name = `${src.kind}-${src.vm}.${src.format}`;
      await form.locator("#destination").fill(name);
      await submit(page, form, "Export");
      await expectPath(page, "/exports");
      if ((await page.locator(".alert, .error").count()) > 0) {
        await shot(page, `${src.kind}-export-refused`);
        fail(`exporting ${src.kind}: ${await page.locator(".alert, .error").first().textContent()}`);
      }
      result.exports[src.kind] = { name };
    }
    for (;;) {
      const list = await api(page, "/api/v1/exports");
      let done = 0;
      for (const [kind, e] of Object.entries(result.exports)) {
        const x = list.find((v) => v.destination.endsWith("/" + e.name));
        if (!x) fail(`export ${e.name} is not listed`);
        if (x.state === "failed") fail(`the ${kind} export failed: ${x.error}`);
        if (x.state === "done" && x.downloadable) {
          Object.assign(e, { id: x.id, destination: x.destination, sha256: x.sha256, file_sha256: x.file_sha256, size: x.size_bytes });
          done += 1;
        }
      }
      if (done === 2) break;
      if (Date.now() > deadline) fail(`the exports did not finish: ${JSON.stringify(list)}`);
      await page.waitForTimeout(1000);
    }
    await page.goto(cfg.url + "/exports");
    await shot(page, "exports");

    // 9. Download each export through the browser (the page's link).
    for (const [kind, e] of Object.entries(result.exports)) {
      const link = page.locator(`tr[data-export-id="${e.id}"] a[data-field="download"]`);
      await link.waitFor({ state: "visible", timeout: 30000 }).catch(() => fail(`no download link for ${e.name}`));
      const [dl] = await Promise.all([page.waitForEvent("download", { timeout: 60000 }), link.click()]);
      const file = path.join(cfg.downloads, dl.suggestedFilename());
      await dl.saveAs(file);
      const failure = await dl.failure();
      if (failure) fail(`downloading ${e.name}: ${failure}`);
      e.download = file;
      console.log(`${kind} export downloaded to ${file} (${fs.statSync(file).size} bytes)`);
    }
    await shot(page, "downloaded");

    // 10. Settings (data space shown) and the other pages, none showing a secret.
    for (const [p, name] of [["/settings", "settings"], ["/ledger", "ledger"], ["/logs", "logs"]]) {
      await page.goto(cfg.url + p);
      await expectPath(page, p);
      await expectNoSecrets(page);
      await shot(page, name);
    }
    result.settings_data_free = (await page.goto(cfg.url + "/settings"),
      (await page.locator('[data-field="data_free"]').first().textContent()).trim());
  } catch (e) {
    await page.screenshot({ path: path.join(cfg.shots, "failure.png"), fullPage: true }).catch(() => {});
    console.error(`FAILED at ${page.url()}: ${e.message}`);
    await browser.close();
    process.exit(1);
  }
  await browser.close();
  console.log("RESULT " + JSON.stringify(result));
}

main().catch((e) => {
  console.error(`FAILED: ${e.stack || e}`);
  process.exit(1);
});
