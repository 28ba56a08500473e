// The operator pages of issue 18 in a real browser (Debian's chromium driven by playwright-core):
// checks with a failed one → "Finish setup" asks to confirm → the dashboard's banner; the
// inventory's search box, folder tree and a bulk creation of three jobs with one schedule (then
// the jobs exist in the API); an export whose progress changes while we watch, then cancelled
// (nothing left to download); an unknown disk refused when the form is posted; the bandwidth
// limit set and shown; a source's credentials edited (a refused login first); the checks run
// again once fixed, and the banner gone. A screenshot of every step goes to GODWIT_SCREENSHOTS.
//
// Configuration by environment:
//   GODWIT_URL              the web UI (the wizard at the checks step, a failing staging check)
//   GODWIT_ADMIN_PASSWORD   the admin password
//   GODWIT_GOOD_STAGING     a staging address whose free-space check passes
//   GODWIT_FINGERPRINT      the staging certificate's fingerprint
//   GODWIT_SCREENSHOTS      directory (created)
//   CHROMIUM                browser binary (default /usr/bin/chromium)
// Prints `RESULT {json}` and exits 0; any failed expectation exits 1 with the reason.

import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";
import { env, fail, navigator, screenshots, submit } from "./common.mjs";

const cfg = {
  url: env("GODWIT_URL").replace(/\/$/, ""),
  password: env("GODWIT_ADMIN_PASSWORD"),
  goodStaging: env("GODWIT_GOOD_STAGING"),
  fingerprint: env("GODWIT_FINGERPRINT"),
  shots: env("GODWIT_SCREENSHOTS"),
  chromium: env("CHROMIUM", "/usr/bin/chromium"),
};
const shot = screenshots(cfg.shots);
const go = navigator(cfg.url);

// A JSON API call from the page (session cookie + CSRF header).
async function api(page, method, p, body) {
  return page.evaluate(
    async ([method, p, body]) => {
      const s = await (await fetch("/api/v1/session")).json();
      const r = await fetch(p, {
        method,
        headers: { "content-type": "application/json", "x-csrf-token": s.csrf_token },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await r.text();
      return { status: r.status, body: text ? JSON.parse(text) : null };
    },
    [method, p, body],
  );
}

async function main() {
  const browser = await chromium.launch({
    executablePath: cfg.chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
  const page = await (await browser.newContext({ viewport: { width: 1300, height: 900 } })).newPage();
  const cspErrors = [];
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy/i.test(m.text())) cspErrors.push(m.text());
  });
  const result = {};
  try {
    // Log in; the wizard is at its checks step.
    await go(page, "/login");
    await page.locator("#password").fill(cfg.password);
    await submit(page, page.locator("form", { has: page.locator("#password") }), "Log in");
    await go(page, "/setup/checks");

    // 1. Checks: one fails; finishing asks to confirm; the dashboard keeps a banner.
    await submit(page, page.locator('form[action="/setup/checks"]'), /Run the checks/);
    const failed = page.locator('tr.fail[data-check="staging-space"]');
    if ((await failed.count()) !== 1) fail("the staging free-space check did not fail");
    await shot(page, "checks-failed");
    await go(page, "/setup/checks");
    if ((await page.locator("#checks-summary").count()) !== 1) fail("the checks were not shown again on a revisit");
    await submit(page, page.locator('form.actions[action="/setup/finish"]').last(), "Finish setup");
    await page.locator("#finish-confirm").waitFor({ timeout: 10000 }).catch(() => fail("finishing with a failed check did not ask to confirm"));
    await shot(page, "finish-confirm");
    await submit(page, page.locator("#finish-confirm form"), "Finish setup anyway");
    await go(page, "/");
    await page.locator("#checks-banner").waitFor({ timeout: 10000 }).catch(() => fail("no banner on the dashboard after finishing with a failed check"));
    await shot(page, "dashboard-banner");

    // 2. Inventory: search, tree, bulk creation of three VMs with one schedule.
    await go(page, "/inventory");
    const source = await page.locator('[data-field="source"]').first().textContent();
    if (/src-/.test(source)) fail(`the inventory shows a source id: ${source}`);
    await page.locator("#q").fill("web");
    await submit(page, page.locator('form[role="search"]'), "Search");
    const found = await page.locator("table.inventory tbody tr").count();
    if (found !== 3) fail(`searching "web" found ${found} VMs, not 3`);
    await shot(page, "inventory-search");
    await Promise.all([page.waitForLoadState("load"), page.locator(".tree-folders a", { hasText: "DC0/vm/Web" }).click()]);
    const inFolder = await page.locator("table.inventory tbody tr").count();
    if (inFolder !== 3) fail(`the folder DC0/vm/Web shows ${inFolder} VMs`);
    await shot(page, "inventory-tree");
    for (const vm of ["web-01", "web-02", "web-03"]) {
      await page.locator(`tr[data-vm="${vm}"] input[type=checkbox]`).check();
    }
    const bulk = page.locator("form#bulk");
    await bulk.locator('select[name="schedule"]').selectOption("every");
    await bulk.locator('input[name="hours"]').fill("12");
    await submit(page, bulk, "Create jobs for the selected VMs");
    const summary = (await page.locator("#bulk-results h2").textContent()).trim();
    if (summary !== "3 of 3 jobs created") fail(`bulk result: ${summary}`);
    await shot(page, "inventory-bulk-created");
    const jobs = (await api(page, "GET", "/api/v1/jobs")).body;
    const names = jobs.map((j) => j.vm).sort();
    if (names.join(",") !== "web-01,web-02,web-03") fail(`jobs after the bulk creation: ${names}`);
    for (const j of jobs) {
      if (j.schedule.kind !== "every_hours" || j.schedule.hours !== 12) fail(`job ${j.vm} has schedule ${JSON.stringify(j.schedule)}`);
    }
    result.bulk_jobs = names;

    // 3. Exports: wait for a replica, then an unknown disk, then progress and cancel.
    const web03 = jobs.find((j) => j.vm === "web-03");
    const deadline = Date.now() + 30000;
    for (;;) {
      const j = (await api(page, "GET", `/api/v1/jobs/${web03.id}`)).body;
      if (j.runs_completed > 0) break;
      if (Date.now() > deadline) fail("the job did not finish its first run");
      await page.waitForTimeout(300);
    }
    await go(page, "/exports");
    let form = page.locator('form[action="/exports"]');
    await form.locator("#job_id").selectOption(web03.id);
    const disks = await form.locator("#disk option:not([hidden])").allTextContents();
    if (disks.length !== 2 || !disks[1].includes("Hard disk 2 (4.0 GiB)")) fail(`disks offered: ${disks}`);
    // An unknown disk (as a stale page or a hand-made post would send): refused on the field.
    await form.locator("#disk").evaluate((sel) => {
      const o = document.createElement("option");
      o.value = "9";
      o.dataset.job = sel.form.job_id.value;
      o.textContent = "disk 9";
      sel.appendChild(o);
      sel.value = "9";
    });
    await form.locator("#destination").fill("web-03-disk9.vmdk");
    await submit(page, form, "Export");
    const diskErr = (await page.locator("#disk-error").textContent().catch(() => "")).trim();
    if (!diskErr.includes("has no disk 9")) fail(`no refusal on the disk field: ${diskErr}`);
    await shot(page, "export-unknown-disk");
    form = page.locator('form[action="/exports"]');
    await form.locator("#job_id").selectOption(web03.id);
    await form.locator("#disk").evaluate((sel) => { sel.value = "1"; });
    await form.locator("#destination").fill("web-03-disk1.vmdk");
    await submit(page, form, "Export");
    const row = page.locator("#exports tbody tr", { hasText: "web-03-disk1.vmdk" });
    const progress = row.locator('[data-field="progress"]');
    await page.waitForTimeout(2500);
    const p1 = (await progress.textContent()).trim();
    await page.waitForTimeout(2500);
    const p2 = (await progress.textContent()).trim();
    if (!p1 || p1 === p2) fail(`export progress did not change while watched: "${p1}" then "${p2}"`);
    const eta = (await row.locator('[data-field="eta"]').textContent()).trim();
    const rate = (await row.locator('[data-field="rate"]').textContent()).trim();
    if (!/left$/.test(eta) || !/\/s$/.test(rate)) fail(`no rate/ETA shown: "${rate}" "${eta}"`);
    result.export_progress = [p1, p2, rate, eta];
    await shot(page, "export-progress");
    await submit(page, row.locator("form.cancel-export"), "Cancel");
    const row2 = page.locator("#exports tbody tr", { hasText: "web-03-disk1.vmdk" });
    const state = (await row2.locator('[data-field="state"]').textContent()).trim();
    if (state !== "cancelled") fail(`after cancel the export is ${state}`);
    if (await row2.locator('[data-field="download"]').isVisible()) fail("a cancelled export offers a download");
    await shot(page, "export-cancelled");
    const exps = (await api(page, "GET", "/api/v1/exports")).body;
    const cancelled = exps.find((e) => e.destination.endsWith("web-03-disk1.vmdk"));
    const dl = await page.evaluate(async (id) => (await fetch(`/api/v1/exports/${id}/download`)).status, cancelled.id);
    if (dl !== 409) fail(`downloading a cancelled export answered ${dl}`);
    // An export that fails (the double's data partition is "full" for full-* files): the row
    // turns failed by itself and says what happened and what to do, with the code.
    form = page.locator('form[action="/exports"]');
    await form.locator("#job_id").selectOption(web03.id);
    await form.locator("#disk").evaluate((sel) => { sel.value = "0"; });
    await form.locator("#destination").fill("full-web-03.vmdk");
    await submit(page, form, "Export");
    const frow = page.locator("#exports tbody tr", { hasText: "full-web-03.vmdk" });
    const fstate = frow.locator('[data-field="state"]');
    for (let i = 0; i < 40 && (await fstate.textContent()).trim() !== "failed"; i++) await page.waitForTimeout(250);
    if ((await fstate.textContent()).trim() !== "failed") fail("the failing export did not turn failed without a reload");
    const problem = frow.locator(".export-error");
    if (!(await problem.isVisible())) fail("a failed export does not show what happened");
    const ferr = {
      code: (await problem.locator('[data-field="error_code"]').textContent()).trim(),
      message: (await problem.locator('[data-field="error_message"]').textContent()).trim(),
      remediation: (await problem.locator('[data-field="error_remediation"]').textContent()).trim(),
    };
    if (ferr.code !== "export.target_full" || !ferr.message.includes("no room") || !ferr.remediation.includes("Delete exports")) fail(`the failed export shows ${JSON.stringify(ferr)}`);
    if (/os error|\{|--[a-z]/.test(ferr.message + ferr.remediation)) fail(`the export error is not readable: ${JSON.stringify(ferr)}`);
    result.export_error = ferr;
    await shot(page, "export-failed");

    // 4. Settings: bandwidth limit set and shown; credentials edited.
    await go(page, "/settings");
    const tf = page.locator('form[action="/settings/transfer"]');
    await tf.locator("#bandwidth_limit_mbps").fill("200");
    await tf.locator("#business_hours_limit_mbps").fill("40");
    await submit(page, tf, "Save transfer settings");
    const shown = await page.locator("#bandwidth_limit_mbps").inputValue();
    if (shown !== "200") fail(`the bandwidth limit shows ${shown}`);
    const t = (await api(page, "GET", "/api/v1/settings/transfer")).body;
    if (t.bandwidth_limit_mbps !== 200 || t.business_hours_limit_mbps !== 40) fail(`transfer settings: ${JSON.stringify(t)}`);
    await shot(page, "settings-bandwidth");
    const cred = page.locator('form[action$="/credentials"]').first();
    await page.locator("details.credentials summary").first().click();
    await cred.locator('input[name="username"]').fill("migration@vsphere.local");
    await cred.locator('input[name="password"]').fill("wrong-password");
    await submit(page, cred, "Check and save credentials");
    if ((await page.locator('[id$="-password-error"]').count()) !== 1) fail("a refused login was not shown on the password field");
    await shot(page, "settings-credentials-refused");
    const cred2 = page.locator('form[action$="/credentials"]').first();
    await cred2.locator('input[name="username"]').fill("migration@vsphere.local");
    await cred2.locator('input[name="password"]').fill("a-new-password-1");
    await submit(page, cred2, "Check and save credentials");
    const user = (await page.locator('[data-field="username"]').first().textContent()).trim();
    if (user !== "migration@vsphere.local") fail(`the source's user is ${user}`);
    await shot(page, "settings-credentials-saved");

    // 4b. CBT per source: switched off and on again from the sources list.
    const cbtText = async () => (await page.locator('form.cbt [data-field="cbt"]').first().textContent()).trim();
    if ((await cbtText()) !== "on") fail(`CBT shows ${await cbtText()} before it was switched`);
    await submit(page, page.locator("form.cbt").first(), "Turn off");
    if ((await cbtText()) !== "off") fail(`CBT shows ${await cbtText()} after Turn off`);
    const srcs = (await api(page, "GET", "/api/v1/settings")).body.sources;
    if (srcs[0].cbt !== false) fail(`the API says cbt ${srcs[0].cbt} after Turn off`);
    await shot(page, "settings-cbt-off");
    await submit(page, page.locator("form.cbt").first(), "Turn on");
    if ((await cbtText()) !== "on") fail(`CBT shows ${await cbtText()} after Turn on`);

    // 4c. Update bundle upload: a file that is not a bundle is refused with the reason; a
    // bundle is verified (the test double checks the magic only).
    const fs = await import("node:fs");
    const os = await import("node:os");
    const path = await import("node:path");
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "godwit-upd-"));
    const notBundle = path.join(tmp, "notes.bundle");
    fs.writeFileSync(notBundle, "not an update");
    const good = path.join(tmp, "good.bundle");
    fs.writeFileSync(good, Buffer.concat([Buffer.from("GODWITUB"), Buffer.alloc(4096)]));
    const upd = page.locator("#update-form");
    await upd.locator("#update-bundle").setInputFiles(notBundle);
    await upd.getByRole("button", { name: "Upload and verify" }).click();
    await page.waitForFunction(() => document.querySelector("#update-result").textContent.startsWith("Refused"));
    const refused = await page.locator("#update-result").textContent();
    if (!refused.includes("bad magic")) fail(`the refused upload says: ${refused}`);
    await shot(page, "settings-update-refused");
    await upd.locator("#update-bundle").setInputFiles(good);
    await upd.getByRole("button", { name: "Upload and verify" }).click();
    await page.waitForFunction(() => document.querySelector("#update-result").textContent.startsWith("Update "));
    const accepted = await page.locator("#update-result").textContent();
    if (!accepted.includes("verified")) fail(`the accepted upload says: ${accepted}`);
    await shot(page, "settings-update-verified");
    fs.rmSync(tmp, { recursive: true, force: true });

    // 5. Fixed: the checks pass and the banner goes.
    const st = await api(page, "PUT", "/api/v1/settings/staging", {
      kind: "server", address: cfg.goodStaging, fingerprint: cfg.fingerprint, token: "staging-token-2",
    });
    if (st.status !== 204) fail(`setting the staging target: ${st.status}`);
    await go(page, "/settings");
    await submit(page, page.locator('form[action="/settings/checks"]'), "Run the checks again");
    await go(page, "/");
    if ((await page.locator("#checks-banner").count()) !== 0) fail("the banner stayed after the checks passed");
    await shot(page, "dashboard-no-banner");
    if (cspErrors.length) fail(`Content Security Policy violations: ${cspErrors.join("; ")}`);
    console.log("RESULT " + JSON.stringify(result));
  } catch (e) {
    await shot(page, "failure").catch(() => {});
    console.error(String(e && e.stack ? e.stack : e));
    console.error("on page " + page.url());
    await browser.close();
    process.exit(1);
  }
  await browser.close();
}

main();
