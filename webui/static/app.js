// Godwit connector: the little JavaScript the pages use. Everything works without it; with it,
// progress bars, the throughput chart and export states update live by polling the JSON API.
"use strict";

(function () {
  const POLL_MS = 2000;

  function units(n) {
    const u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return i === 0 ? n + " B" : (Math.floor(n * 10) / 10).toFixed(1) + " " + u[i];
  }

  const STATE_LABEL = {
    scheduled: "scheduled", snapshotting: "taking snapshot", transferring: "transferring",
    removing_snapshot: "removing snapshot", retry_wait: "waiting to retry",
    completed: "completed", failed: "failed", cancelled: "cancelled",
  };
  const STATE_TONE = {
    completed: "ok", failed: "bad", retry_wait: "bad", snapshotting: "busy",
    transferring: "busy", removing_snapshot: "busy", scheduled: "idle", cancelled: "idle",
  };

  function set(root, field, text) {
    const el = root.querySelector('[data-field="' + field + '"]');
    if (el && el.textContent !== text) el.textContent = text;
  }

  function showJob(root, job) {
    const p = job.progress || { bytes_done: 0, bytes_total: 0, throughput_bps: 0 };
    const total = p.bytes_total;
    let pct = total > 0 ? Math.floor(Math.min(p.bytes_done, total) * 100 / total) : 0;
    if (job.state === "completed" && total === 0) pct = 100;
    const bar = root.querySelector("progress");
    if (bar) {
      bar.max = Math.max(total, 1);
      bar.value = Math.min(p.bytes_done, bar.max);
      bar.textContent = pct + " %";
    }
    set(root, "progress", total > 0 ? pct + " % (" + units(p.bytes_done) + " of " + units(total) + ")" : pct + " %");
    set(root, "throughput", p.throughput_bps > 0 ? units(p.throughput_bps) + "/s" : "");
    const badge = root.querySelector('[data-field="state"]');
    if (badge) {
      badge.textContent = STATE_LABEL[job.state] || job.state;
      badge.className = "badge " + (STATE_TONE[job.state] || "idle");
    }
    set(root, "error", job.last_error || "");
    set(root, "last_sync", job.last_sync || "never");
    set(root, "next_run", job.next_run || "—");
  }

  async function getJson(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (r.status === 401) { window.location.href = "/login"; throw new Error("logged out"); }
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }

  function poll(url, apply) {
    let busy = false;
    const tick = async () => {
      if (busy || document.hidden) return;
      busy = true;
      try { apply(await getJson(url)); } catch (e) { /* keep the last values shown */ }
      busy = false;
    };
    setInterval(tick, POLL_MS);
  }

  function drawChart(svg, samples) {
    const W = 600, H = 150;
    const peak = samples.reduce((m, s) => Math.max(m, s.bytes_per_second), 0);
    const n = samples.length;
    const pts = samples.map((s, i) => {
      const x = n > 1 ? Math.floor(i * W / (n - 1)) : 0;
      const y = peak === 0 ? H : H - Math.floor(s.bytes_per_second * H / peak);
      return x + "," + y;
    }).join(" ");
    const line = svg.querySelector("polyline");
    if (line) line.setAttribute("points", pts);
    const latest = document.getElementById("tp-latest");
    const peakEl = document.getElementById("tp-peak");
    if (latest) latest.textContent = units(n ? samples[n - 1].bytes_per_second : 0) + "/s";
    if (peakEl) peakEl.textContent = units(peak) + "/s";
    const empty = document.getElementById("tp-empty");
    if (empty && n > 0) empty.hidden = true;
  }

  // An export's progress (allocation-aware bytes, %, rate, ETA) and its cancel button.
  function showExportProgress(row, e) {
    const running = e.state === "running";
    const box = row.querySelector(".export-progress");
    if (box) box.hidden = !running;
    const cancel = row.querySelector("form.cancel-export");
    if (cancel) cancel.hidden = !running;
    const total = e.bytes_total || 0;
    const pct = e.state === "done" ? 100 : (total > 0 ? Math.floor(Math.min(e.bytes_done, total) * 100 / total) : 0);
    const bar = row.querySelector("progress.export");
    if (bar) { bar.value = pct; bar.textContent = pct + " %"; }
    set(row, "progress", total > 0 ? pct + " % (" + units(e.bytes_done) + " of " + units(total) + ")" : "");
    set(row, "rate", e.throughput_bps > 0 ? units(e.throughput_bps) + "/s" : "");
    set(row, "eta", e.eta_seconds == null ? "" : eta(e.eta_seconds));
    if (e.size_bytes != null) set(row, "size", units(e.size_bytes));
    if (e.started_at) set(row, "time", e.finished_at ? e.started_at + " – " + e.finished_at : "since " + e.started_at);
  }

  function eta(secs) {
    const h = Math.floor(secs / 3600), m = Math.floor(secs % 3600 / 60), s = secs % 60;
    const two = (n) => (n < 10 ? "0" : "") + n;
    if (h > 0) return h + " h " + two(m) + " min left";
    if (m > 0) return m + " min " + two(s) + " s left";
    return s + " s left";
  }

  // The export form's disk list shows the chosen job's disks only.
  function filterDisks() {
    const job = document.querySelector('form[action="/exports"] select[name="job_id"]');
    const disk = document.querySelector('form[action="/exports"] select[name="disk"]');
    if (!job || !disk) return;
    const update = () => {
      let firstShown = null;
      for (const o of disk.options) {
        o.hidden = o.dataset.job !== job.value;
        o.disabled = o.hidden;
        if (!o.hidden && firstShown === null) firstShown = o;
      }
      const sel = disk.selectedOptions[0];
      if ((!sel || sel.hidden) && firstShown) firstShown.selected = true;
    };
    job.addEventListener("change", update);
    update();
  }

  function start() {
    filterDisks();
    const jobs = document.querySelector("table#jobs[data-poll]");
    if (jobs) {
      poll(jobs.dataset.poll, (list) => {
        for (const job of list) {
          const row = jobs.querySelector('tr[data-job-id="' + CSS.escape(job.id) + '"]');
          if (row) showJob(row, job);
        }
      });
    }
    const one = document.querySelector("#job[data-poll]");
    if (one) poll(one.dataset.poll, (job) => showJob(one, job));

    const chart = document.querySelector("svg#throughput[data-poll]");
    if (chart) poll(chart.dataset.poll, (samples) => drawChart(chart, samples));

    const exports = document.querySelector("table#exports[data-poll]");
    if (exports) {
      poll(exports.dataset.poll, (list) => {
        for (const e of list) {
          const row = exports.querySelector('tr[data-export-id="' + CSS.escape(e.id) + '"]');
          if (!row) continue;
          const badge = row.querySelector('[data-field="state"]');
          if (badge) { badge.textContent = e.state; badge.className = "badge " + e.state; }
          set(row, "file_sha256", e.file_sha256 || "");
          set(row, "sha256", e.sha256 || "");
          const link = row.querySelector('[data-field="download"]');
          if (link) link.hidden = !e.downloadable;
          showExportProgress(row, e);
        }
      });
    }

    // Show only the fields that belong to the chosen radio option (static address, server/S3).
    for (const group of ["mode", "kind"]) {
      const radios = document.querySelectorAll('input[type=radio][name="' + group + '"][data-toggle]');
      if (!radios.length) continue;
      const update = () => {
        const chosen = [...radios].find((r) => r.checked);
        const value = chosen ? chosen.value : "";
        const form = radios[0].form;
        for (const box of form.querySelectorAll("[data-show-when]")) {
          const mine = group === "mode" ? box.id === "static-fields" : box.id !== "static-fields";
          if (mine) box.hidden = box.dataset.showWhen !== value;
        }
      };
      radios.forEach((r) => r.addEventListener("change", update));
      update();
    }

    // Ask before destructive actions.
    for (const form of document.querySelectorAll("form[data-confirm]")) {
      form.addEventListener("submit", (ev) => {
        if (!window.confirm(form.dataset.confirm)) ev.preventDefault();
      });
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
