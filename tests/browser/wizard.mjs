// Walks the Godwit web UI as a new operator would: the first-run wizard (password with the setup
// code, network, staging target, a source whose certificate is approved, checks), then creates a
// replication job from the inventory, watches its progress bar reach 100 %, creates an export and
// waits for its SHA-256. Bad form values are tried on the way and their errors must show next to
// the field. A screenshot of every step goes to GODWIT_SCREENSHOTS.
//
// playwright-core drives Debian's chromium (no browser download). Configuration by environment:
//   GODWIT_URL                 base URL, e.g. https://127.0.0.1:8443 (self-signed certificates accepted)
//   GODWIT_SETUP_CODE          the one-time setup code `godwit serve` printed
//   GODWIT_ADMIN_PASSWORD      the password to set (must pass the policy: >= 12 characters, not guessable)
//   GODWIT_STAGING_ADDRESS, GODWIT_STAGING_FINGERPRINT, GODWIT_STAGING_TOKEN
//   GODWIT_SOURCE_KIND (vsphere), GODWIT_SOURCE_ADDRESS, GODWIT_SOURCE_USER, GODWIT_SOURCE_PASSWORD
//   GODWIT_VM                  the VM to replicate
//   GODWIT_EXPORT_DEST         where the export is written (a path on the appliance)
//   GODWIT_SCREENSHOTS         directory for the PNGs (created)
//   GODWIT_DNS, GODWIT_NTP     network step values (default 127.0.0.1; empty for none)
//   GODWIT_JOB_TIMEOUT_S       how long the job may take (default 180)
//   CHROMIUM                   browser binary (default /usr/bin/chromium)
// On success prints one line `RESULT {json}` with the job id, export destination and SHA-256,
// and exits 0; any failed expectation exits 1 with the reason (and a screenshot "failure.png").

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
  stagingAddress: env("GODWIT_STAGING_ADDRESS"),
  stagingFingerprint: env("GODWIT_STAGING_FINGERPRINT"),
  stagingToken: env("GODWIT_STAGING_TOKEN"),
  sourceKind: env("GODWIT_SOURCE_KIND", "vsphere"),
  sourceAddress: env("GODWIT_SOURCE_ADDRESS"),
  sourceUser: env("GODWIT_SOURCE_USER"),
  sourcePassword: env("GODWIT_SOURCE_PASSWORD"),
  vm: env("GODWIT_VM"),
  exportDest: env("GODWIT_EXPORT_DEST"),
  shots: env("GODWIT_SCREENSHOTS"),
  // May be set to empty (no DNS/NTP servers): only unset takes the default.
  dns: process.env.GODWIT_DNS ?? "127.0.0.1",
  ntp: process.env.GODWIT_NTP ?? "127.0.0.1",
  jobTimeoutMs: Number(env("GODWIT_JOB_TIMEOUT_S", "180")) * 1000,
  chromium: env("CHROMIUM", "/usr/bin/chromium"),
};
// The setup code is not in this list: `godwit serve` logs it by design (console and log, so the
// operator can find it), and it is void once used, so the Logs page may show it.
const secrets = [cfg.password, cfg.stagingToken, cfg.sourcePassword];

fs.mkdirSync(cfg.shots, { recursive: true });
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
  await page.waitForURL((u) => new URL(u).pathname === want, { timeout: 30000 }).catch(() => {
    fail(`expected to be on ${want}, but the browser is on ${page.url()}`);
  });
}

// A field error must be shown right after the field, tied to it by aria-describedby.
async function expectFieldError(page, field) {
  const err = page.locator(`#${field}-error`);
  await err.waitFor({ state: "visible", timeout: 10000 }).catch(() => {
    fail(`no error shown next to the field "${field}" on ${page.url()}`);
  });
  const text = (await err.textContent()).trim();
  if (!text) fail(`the error next to "${field}" is empty`);
  const input = page.locator(`#${field}`);
  if ((await input.count()) > 0) {
    const described = await input.getAttribute("aria-describedby");
    if (described !== `${field}-error`) fail(`#${field} is not described by its error`);
  }
  console.log(`field error on ${field}: ${text}`);
  return text;
}

// No secret may appear in any page we see.
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

async function main() {
  const browser = await chromium.launch({
    executablePath: cfg.chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1200, height: 900 },
  });
  const page = await context.newPage();
  page.on("pageerror", (e) => console.log(`page script error: ${e.message}`));
  let result = null;
  try {
    // 1. Admin password, unlocked by the setup code.
    await page.goto(cfg.url + "/");
    await expectPath(page, "/setup/password");
    await shot(page, "password");
    let form = page.locator('form[action="/setup/password"]');
    await form.locator("#setup_code").fill("0000-wrong");
    await form.locator("#new_password").fill("short");
    await form.locator("#confirm_password").fill("short");
    await submit(page, form, "Save and continue");
    // The password policy is checked first (a weak password checks no setup code) and says why.
    await expectFieldError(page, "new_password");
    if ((await page.locator("#new_password").inputValue()) !== "") fail("a password input echoed its value");
    await shot(page, "password-error");
    form = page.locator('form[action="/setup/password"]');
    await form.locator("#setup_code").fill("0000-wrong");
    await form.locator("#new_password").fill(cfg.password);
    await form.locator("#confirm_password").fill(cfg.password);
    await submit(page, form, "Save and continue");
    await expectFieldError(page, "setup_code");
    form = page.locator('form[action="/setup/password"]');
    await form.locator("#setup_code").fill(cfg.setupCode);
    await form.locator("#new_password").fill(cfg.password);
    await form.locator("#confirm_password").fill(cfg.password);
    await submit(page, form, "Save and continue");

    // 2. Network: a bad host name first, then good values.
    await expectPath(page, "/setup/network");
    await shot(page, "network");
    form = page.locator('form[action="/setup/network"]');
    await form.locator("#hostname").fill("not a host name!");
    await form.locator('input[name="mode"][value="dhcp"]').check();
    await form.locator("#dns_servers").fill(cfg.dns);
    await form.locator("#ntp_servers").fill(cfg.ntp);
    await submit(page, form, "Save and continue");
    await expectFieldError(page, "hostname");
    await shot(page, "network-error");
    form = page.locator('form[action="/setup/network"]');
    await form.locator("#hostname").fill("godwit-e2e");
    await submit(page, form, "Save and continue");

    // 3. Staging target: the staging server's address, fingerprint and token.
    await expectPath(page, "/setup/staging");
    form = page.locator('form[action="/setup/staging"]');
    await form.locator('input[name="kind"][value="server"]').check();
    await form.locator("#address").fill(cfg.stagingAddress);
    await form.locator("#fingerprint").fill(cfg.stagingFingerprint);
    await form.locator("#token").fill(cfg.stagingToken);
    await shot(page, "staging");
    await submit(page, form, "Save and continue");

    // 4. Source: probe, look at the certificate, approve it explicitly, then log in.
    await expectPath(page, "/setup/sources");
    form = page.locator('form[action="/setup/sources/probe"]');
    await form.locator("#kind").selectOption(cfg.sourceKind);
    await form.locator("#address").fill(cfg.sourceAddress);
    await shot(page, "sources");
    await submit(page, form, "Connect and show certificate");
    const fp = (await page.locator("#probed-fingerprint").textContent({ timeout: 30000 })).trim();
    if (!/^SHA256:/.test(fp)) fail(`the probed certificate fingerprint looks wrong: ${fp}`);
    console.log(`source certificate ${fp}`);
    await shot(page, "source-certificate");
    form = page.locator('form[action="/setup/sources/add"]');
    await form.locator("#username").fill(cfg.sourceUser);
    await form.locator("#password").fill(cfg.sourcePassword);
    await submit(page, form, "Approve and add"); // not ticked: must be refused
    await expectFieldError(page, "approve");
    await shot(page, "source-not-approved");
    form = page.locator('form[action="/setup/sources/add"]');
    await form.locator("#approve").check();
    await form.locator("#password").fill(cfg.sourcePassword);
    await submit(page, form, "Approve and add");
    await expectPath(page, "/setup/sources");
    await page.locator("table", { hasText: cfg.sourceAddress.split(":")[0] }).waitFor({ timeout: 10000 })
      .catch(() => fail("the added source is not listed"));
    await shot(page, "source-added");
    await expectNoSecrets(page);
    await Promise.all([page.waitForLoadState("load"), page.getByRole("link", { name: "Continue" }).click()]);

    // 5. Checks: run them, look at the results, finish.
    await expectPath(page, "/setup/checks");
    form = page.locator('form[action="/setup/checks"]');
    await submit(page, form, "Run the checks");
    await page.locator("table.checks").waitFor({ timeout: 60000 }).catch(() => fail("no check results shown"));
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

    // 6. Inventory: eligibility shown; replicate the VM.
    await Promise.all([page.waitForLoadState("load"), page.getByRole("link", { name: "Open the inventory" }).click()]);
    await expectPath(page, "/inventory");
    await shot(page, "inventory");
    const row = page.locator("table.inventory tbody tr", { hasText: cfg.vm }).first();
    if ((await row.count()) === 0) fail(`VM ${cfg.vm} is not in the inventory`);
    const jobForm = row.locator('form[action="/jobs"]');
    // A bad value first: every N hours with a non-number.
    await jobForm.locator('select[name="schedule"]').selectOption("every");
    await jobForm.locator('input[name="hours"]').fill("soon");
    await submit(page, jobForm, "Replicate");
    await expectFieldError(page, "hours");
    await shot(page, "inventory-error");
    const row2 = page.locator("table.inventory tbody tr", { hasText: cfg.vm }).first();
    const jobForm2 = row2.locator('form[action="/jobs"]');
    await jobForm2.locator('select[name="schedule"]').selectOption("once");
    await submit(page, jobForm2, "Replicate");
    await page.waitForURL(/\/jobs\/[^/]+$/, { timeout: 30000 }).catch(() => fail("creating the job did not open it"));
    const jobId = decodeURIComponent(new URL(page.url()).pathname.split("/").pop());
    console.log(`job ${jobId}`);

    // 7. Watch the progress bar (updated by the page's own polling) reach 100 %.
    const bar = page.locator("#job-progress");
    let sawPartial = false;
    const deadline = Date.now() + cfg.jobTimeoutMs;
    for (;;) {
      const [value, max] = await bar.evaluate((el) => [el.value, el.max]);
      const state = (await page.locator('#job [data-field="state"]').textContent()).trim();
      if (!sawPartial && value > 0 && value < max) {
        sawPartial = true;
        await shot(page, "job-progress");
      }
      if (max > 1 && value >= max && (state === "completed" || state === "scheduled")) break;
      if (state === "failed") {
        const err = await page.locator('#job [data-field="error"]').textContent();
        await shot(page, "job-failed");
        fail(`the job failed: ${err}`);
      }
      if (Date.now() > deadline) fail(`the job did not reach 100 % (at ${value} of ${max}, ${state})`);
      await page.waitForTimeout(500);
    }
    const text = (await page.locator("#job-progress-text").textContent()).trim();
    if (!text.startsWith("100 %")) fail(`progress text says ${text}`);
    await shot(page, "job-complete");

    // 8. Dashboard with the job and the throughput chart.
    await page.goto(cfg.url + "/");
    await page.locator(`tr[data-job-id="${jobId}"]`).waitFor({ timeout: 10000 }).catch(() => fail("job not on the dashboard"));
    await page.locator("#throughput").waitFor();
    await shot(page, "dashboard");

    // 9. Export the replica: an empty destination is refused, then the real one.
    await page.goto(cfg.url + `/jobs/${encodeURIComponent(jobId)}`);
    form = page.locator('form[action="/exports"]');
    await form.locator("#destination").fill("");
    await submit(page, form, "Export");
    await expectFieldError(page, "destination");
    await shot(page, "export-error");
    form = page.locator('form[action="/exports"]');
    await form.locator("#format").selectOption("vmdk");
    await form.locator("#destination").fill(cfg.exportDest);
    await submit(page, form, "Export");
    await expectPath(page, "/exports");
    const exportRow = page.locator("#exports tbody tr", { hasText: cfg.exportDest }).first();
    const exportDeadline = Date.now() + cfg.jobTimeoutMs;
    let sha = "";
    let fileSha = "";
    for (;;) {
      const state = (await exportRow.locator('[data-field="state"]').textContent()).trim();
      sha = (await exportRow.locator('[data-field="sha256"]').textContent()).trim();
      fileSha = (await exportRow.locator('[data-field="file_sha256"]').textContent()).trim();
      if (state === "done" && /^[0-9a-f]{64}$/.test(sha) && /^[0-9a-f]{64}$/.test(fileSha)) break;
      if (state === "failed") {
        await shot(page, "export-failed");
        fail(`the export failed: ${await exportRow.textContent()}`);
      }
      if (Date.now() > exportDeadline) fail(`the export did not finish (state ${state})`);
      await page.waitForTimeout(500);
    }
    await shot(page, "exports");

    // 10. The other dashboard pages render, and none shows a secret.
    for (const [p, name] of [["/ledger", "ledger"], ["/settings", "settings"], ["/logs", "logs"]]) {
      await page.goto(cfg.url + p);
      await expectPath(page, p);
      await expectNoSecrets(page);
      await shot(page, name);
    }
    result = { job_id: jobId, export_destination: cfg.exportDest, export_sha256: sha, export_file_sha256: fileSha, source_fingerprint: fp };
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
