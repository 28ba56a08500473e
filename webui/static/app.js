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
    set(root, "error", job.error ? job.error.message : (job.last_error || ""));
    set(root, "last_sync", job.last_sync || "never");
    set(root, "next_run", job.next_run || "—");
    set(root, "staging_target", job.staging_target || "—"); // issue 21
    showReplication(root, job);
  }

  // ---- replication view (issue #18) ----------------------------------------------------------
  const REPL = {
    initial_sync: ["initial sync", "No consistent replica yet: the first full copy of every disk is running or waiting to start."],
    backlog: ["backlog", "A replica exists; a run is copying what changed since the last one."],
    continuous: ["continuous", "In sync: the last run made a consistent replica and the next run is scheduled."],
    stalled: ["stalled", "Runs are failing; the reason and what to do are shown with the job."],
    paused: ["paused", "A consistent replica exists and no further run is scheduled; Run now starts one."],
    cancelled: ["cancelled", "The job was cancelled; Run now starts it again."],
  };
  const RUNNING = { snapshotting: 1, transferring: 1, removing_snapshot: 1 };

  function duration(secs) {
    const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24;
    const m = Math.floor(secs / 60) % 60, s = secs % 60;
    const two = (n) => (n < 10 ? "0" : "") + n;
    if (d > 0) return d + " d " + h + " h";
    if (h > 0) return h + " h " + two(m) + " min";
    if (m > 0) return m + " min " + two(s) + " s";
    return s + " s";
  }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function showReplication(root, job) {
    const running = !!RUNNING[job.state];
    const r = REPL[job.replication_state] || [job.replication_state || "", ""];
    const badge = root.querySelector('[data-field="replication_state"]');
    if (badge) {
      badge.textContent = r[0];
      badge.title = r[1];
      badge.className = "badge repl " + (job.replication_state || "");
    }
    set(root, "replication_explanation", r[1]);
    set(root, "stalled_reason", job.stalled_reason || "");
    set(root, "phase", job.phase || "");
    set(root, "eta", job.eta_seconds == null ? (running ? "unknown yet" : "—") : duration(job.eta_seconds));
    set(root, "lag", job.lag_seconds == null ? "no replica yet" : duration(job.lag_seconds));
    const runs = document.querySelector('[data-field="runs_completed"]');
    if (runs && root.id === "job") {
      const n = job.runs_completed;
      runs.textContent = n + " completed run" + (n === 1 ? "" : "s");
    }
    const box = document.getElementById("job-error");
    if (box && root.id === "job") {
      const e = job.error;
      box.hidden = !e;
      set(box, "error_message", e ? e.message : "");
      set(box, "error_code", e ? e.code : "");
      set(box, "error_remediation", e ? e.remediation : "");
      set(box, "error_detail", e && e.detail ? e.detail : "");
    }
    const runForm = document.getElementById("run-form");
    const cancelForm = document.getElementById("cancel-form");
    if (runForm && root.id === "job") runForm.hidden = running;
    if (cancelForm && root.id === "job") cancelForm.hidden = !running;
    const disks = document.querySelector("table#disks tbody");
    if (disks && root.id === "job" && job.disks) {
      const rows = job.disks.map((d) => {
        const tr = el("tr", { "data-disk": String(d.index) });
        const pct = d.bytes_total > 0 ? Math.floor(Math.min(d.bytes_done, d.bytes_total) * 100 / d.bytes_total) : 0;
        tr.append(el("td", { "data-field": "label" }, d.label), el("td", { "data-field": "capacity" }, units(d.capacity_bytes)));
        const cell = el("td");
        const bar = el("progress", { max: String(Math.max(d.bytes_total, 1)), value: String(Math.min(d.bytes_done, Math.max(d.bytes_total, 1))), "aria-label": "Progress of " + d.label });
        cell.append(bar, " ", el("span", { "data-field": "progress" }, pct + " % (" + units(d.bytes_done) + " of " + units(d.bytes_total) + ")"));
        const sync = el("td", { "data-field": "last_sync" });
        sync.append(el("code", {}, d.last_sync || "—"));
        const sha = el("td", { "data-field": "sha256" });
        sha.append(el("code", { class: "hash" }, d.sha256 || "—"));
        tr.append(cell, el("td", { "data-field": "state" }, d.state), el("td", { "data-field": "throughput" }, d.throughput_bps > 0 ? units(d.throughput_bps) + "/s" : ""), sync, sha);
        return tr;
      });
      disks.replaceChildren(...rows);
      const empty = document.getElementById("disks-empty");
      if (empty) empty.hidden = rows.length > 0;
    }
    const phases = document.getElementById("phases");
    if (phases && root.id === "job" && job.phases) {
      phases.replaceChildren(...job.phases.map((p) => {
        const li = el("li", { class: p.state, "data-phase": p.name });
        li.append(el("span", { "data-field": "name" }, p.name), " ", el("span", { class: "muted", "data-field": "at" }, p.at || p.state));
        return li;
      }));
      const empty = document.getElementById("phases-empty");
      if (empty) empty.hidden = job.phases.length > 0;
    }
    const stages = document.getElementById("stages");
    if (stages && root.id === "job") {
      const s = job.stages;
      const ms = (v) => (v < 1000 ? v + " ms" : duration(Math.floor(v / 1000)));
      const rows = s ? [["reading the source", s.read_ms], ["hashing", s.hash_ms], ["compressing", s.compress_ms],
        ["sending (until acknowledged)", s.send_ms], ["waiting for staging", s.staging_wait_ms], ["elapsed (all disks)", s.wall_ms]] : [];
      stages.replaceChildren(...rows.flatMap(([n, v]) => [el("dt", {}, n), el("dd", {}, ms(v))]));
    }
  }

  function showHistory(list, events) {
    if (list.children.length === events.length) return;
    list.replaceChildren(...events.map((e) => {
      const li = el("li");
      li.append(el("time", {}, e.at), " " + e.message);
      return li;
    }));
    const empty = document.getElementById("history-empty");
    if (empty) empty.hidden = events.length > 0;
  }

  // Chart images are drawn by the server; reloading them keeps them live.
  function refreshImage(img) {
    setInterval(() => {
      if (document.hidden) return;
      const base = img.getAttribute("src").replace(/[?&]t=\d+$/, "");
      img.setAttribute("src", base + (base.includes("?") ? "&" : "?") + "t=" + Date.now());
    }, POLL_MS);
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
    const history = document.getElementById("history");
    if (one && history && one.dataset.events) poll(one.dataset.events, (events) => showHistory(history, events));

    for (const img of document.querySelectorAll("img[data-refresh]")) refreshImage(img);
    const choice = document.getElementById("chart-job");
    const chartImg = document.querySelector("img#throughput[data-src]");
    if (choice && chartImg) {
      choice.addEventListener("change", () => {
        chartImg.setAttribute("src", chartImg.dataset.src + encodeURIComponent(choice.value));
      });
    }

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
          // issue 18 (wt-errors): a failed or cancelled export says what happened and what to do.
          const problem = row.querySelector(".export-error");
          if (problem) problem.hidden = !e.error;
          set(row, "error_message", e.error ? e.error.message : "");
          set(row, "error_code", e.error ? e.error.code : "");
          set(row, "error_remediation", e.error ? e.error.remediation : "");
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

    // Update bundle upload (issue 18, settings): the file as the raw body of POST
    // /api/v1/update with the page's CSRF token; the answer (or the refusal) shown below.
    for (const form of document.querySelectorAll("form[data-upload]")) {
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const out = form.querySelector('[role="status"]');
        const file = form.querySelector('input[type="file"]').files[0];
        const token = form.querySelector('input[name="csrf"]');
        if (!file) return;
        out.className = "";
        out.textContent = "Uploading " + units(file.size) + "…";
        try {
          const r = await fetch(form.dataset.upload, {
            method: "POST", credentials: "same-origin", body: file,
            headers: { "content-type": "application/octet-stream", "x-csrf-token": token ? token.value : "",
                       Accept: "application/json" },
          });
          const body = await r.json().catch(() => ({}));
          if (r.ok) {
            out.className = "ok";
            out.textContent = "Update " + body.version + " (" + units(body.bytes) + "): " + body.message;
          } else {
            const why = body.fields ? body.fields.map((f) => f.message).join("; ") : (body.message || r.statusText);
            out.className = "error";
            out.textContent = "Refused: " + why;
          }
        } catch (e) {
          out.className = "error";
          out.textContent = "The upload failed: " + e;
        }
      });
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
