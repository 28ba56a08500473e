// What the browser tests share: configuration from the environment, failing with a reason,
// numbered full-page screenshots, page navigation and form submission.

import fs from "node:fs";
import path from "node:path";

// An environment variable; required unless a fallback is given.
export function env(name, fallback) {
  const v = process.env[name];
  if (v === undefined || v === "") {
    if (fallback === undefined) throw new Error(`environment variable ${name} is required`);
    return fallback;
  }
  return v;
}

export function fail(msg) {
  throw new Error(msg);
}

// `shot(page, name)` writes `NN-name.png` into `dir` (created), numbered in order.
export function screenshots(dir) {
  fs.mkdirSync(dir, { recursive: true });
  let n = 0;
  return async function shot(page, name) {
    n += 1;
    const file = path.join(dir, `${String(n).padStart(2, "0")}-${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    console.log(`screenshot ${file}`);
  };
}

// `go(page, "/path")` under the web UI at `base`.
export function navigator(base) {
  return async function go(page, p) {
    await page.goto(base + p, { waitUntil: "load" });
  };
}

export async function submit(page, form, buttonText) {
  await Promise.all([page.waitForLoadState("load"), form.getByRole("button", { name: buttonText }).click()]);
}
