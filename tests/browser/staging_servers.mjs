// The staging servers page of issue 21 in a real browser (Debian's chromium driven by
// playwright-core): the settings page links to it; the wizard's server is listed reachable, a
// down one unreachable with its error; a new server's certificate is shown, approved and the
// server listed; an unreachable address is refused on its field; a server is removed. A
// screenshot of every step goes to GODWIT_SCREENSHOTS.
//
// Configuration by environment:
//   GODWIT_URL              the web UI (a configured appliance)
//   GODWIT_ADMIN_PASSWORD   the admin password
//   GODWIT_FINGERPRINT      the fingerprint the test backend's servers show
//   GODWIT_SCREENSHOTS      directory (created)
//   CHROMIUM                browser binary (default /usr/bin/chromium)
// Prints `RESULT {json}` and exits 0; any failed expectation exits 1 with the reason.

import { chromium } from "playwright-core";
import { env, fail, navigator, screenshots, submit } from "./common.mjs";

const cfg = {
  url: env("GODWIT_URL").replace(/\/$/, ""),
  password: env("GODWIT_ADMIN_PASSWORD"),
  fingerprint: env("GODWIT_FINGERPRINT"),
  shots: env("GODWIT_SCREENSHOTS"),
  chromium: env("CHROMIUM", "/usr/bin/chromium"),
};
const shot = screenshots(cfg.shots);
const go = navigator(cfg.url);

async function rows(page) {
  return page.locator("#staging-servers tr[data-server]").evaluateAll((trs) =>
    trs.map((tr) => ({
      address: tr.dataset.server,
      state: tr.querySelector('[data-field="state"]').textContent.trim(),
    })),
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
    await go(page, "/login");
    await page.locator("#password").fill(cfg.password);
    await submit(page, page.locator("form", { has: page.locator("#password") }), "Log in");

    // 1. From the settings page to the staging servers page.
    await go(page, "/settings");
    await Promise.all([page.waitForLoadState("load"), page.locator('a[data-link="staging-servers"]').click()]);
    if (!page.url().endsWith("/settings/staging")) fail(`the settings link went to ${page.url()}`);
    let list = await rows(page);
    if (list.length !== 2) fail(`expected the wizard's server and a down one, got ${JSON.stringify(list)}`);
    if (!/^reachable/.test(list[0].state)) fail(`the first server is not shown reachable: ${list[0].state}`);
    if (!/^unreachable/.test(list[1].state) || !/connection refused/.test(list[1].state))
      fail(`the down server does not show its error: ${list[1].state}`);
    await shot(page, "staging-servers-list");

    // 2. An unreachable address is refused, said so on the page.
    await page.locator("#address").fill("unreachable.example");
    await submit(page, page.locator('form[action="/settings/staging/probe"]'), "Show its certificate");
    if (!(await page.content()).includes("connection refused")) fail("an unreachable server's probe did not say why");
    await shot(page, "staging-servers-probe-refused");

    // 3. A new server: its certificate is shown, approved, and it is listed.
    await page.locator("#address").fill("stage3.example");
    await submit(page, page.locator('form[action="/settings/staging/probe"]'), "Show its certificate");
    const fp = (await page.locator('[data-field="probed_fingerprint"]').textContent()).trim();
    if (fp !== cfg.fingerprint) fail(`the probed fingerprint ${fp} is not the server's`);
    await shot(page, "staging-servers-approve");
    await submit(page, page.locator('form[action="/settings/staging/add"]'), /Approve this certificate/);
    if (!page.url().includes("saved=added")) fail(`adding did not redirect: ${page.url()}`);
    list = await rows(page);
    if (!list.some((r) => r.address === "stage3.example:1500" && /^reachable/.test(r.state)))
      fail(`the added server is not listed reachable: ${JSON.stringify(list)}`);
    await shot(page, "staging-servers-added");

    // 4. Remove the down one.
    const down = list[1].address;
    await submit(page, page.locator(`tr[data-server="${down}"] form`), "Remove");
    list = await rows(page);
    if (list.some((r) => r.address === down)) fail(`${down} is still listed after its removal`);
    await shot(page, "staging-servers-removed");
    result.servers = list.map((r) => r.address);
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
