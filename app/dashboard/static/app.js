/* taskgauge dashboard: talks to the REST API (/api/v1) with the API key kept in localStorage. */
(function () {
  "use strict";
  const KEY = "taskgauge_api_key";
  const body = document.body, page = body.dataset.page;
  const $ = (s, r) => (r || document).querySelector(s);
  const P = () => window.TGPlot;

  // ------------------------------------------------------------------ API
  class ApiError extends Error { constructor(msg, status, problem) { super(msg); this.status = status; this.problem = problem; } }
  function key() { return localStorage.getItem(KEY); }
  function requireKey() {
    if (!key() && page !== "signin") { location.href = "/signin?next=" + encodeURIComponent(location.pathname + location.search); throw new Error("signing in"); }
  }
  async function api(path, opts) {
    opts = opts || {};
    const headers = Object.assign({ Accept: "application/json", Authorization: "Bearer " + key() }, opts.headers || {});
    let r;
    try { r = await fetch("/api/v1" + path, Object.assign({}, opts, { headers })); }
    catch (e) { throw new ApiError("cannot reach the taskgauge server: " + e.message, 0); }
    if (r.status === 401) { localStorage.removeItem(KEY); requireKey(); }
    if (!r.ok) {
      let p = {}; try { p = await r.json(); } catch (e) { /* not json */ }
      let d = p.detail; if (Array.isArray(d)) d = d.map(x => (x.loc || []).join(".") + ": " + x.msg).join("; ");
      throw new ApiError(`${p.title || r.statusText || "error"}${d ? ": " + d : ""} (HTTP ${r.status})`, r.status, p);
    }
    if (r.status === 204) return null;
    const ct = r.headers.get("content-type") || "";
    return ct.includes("json") ? r.json() : r.text();
  }
  function flash(msg) { const f = $("#flash"); f.textContent = msg; f.hidden = !msg; if (msg) f.focus && f.scrollIntoView({ block: "nearest" }); }
  function el(tag, attrs, ...kids) {
    const n = document.createElement(tag);
    for (const k in attrs || {}) { if (k === "text") n.textContent = attrs[k]; else if (k === "html") n.innerHTML = attrs[k]; else n.setAttribute(k, attrs[k]); }
    kids.flat().forEach(k => n.append(k instanceof Node ? k : document.createTextNode(String(k))));
    return n;
  }
  const fmt = v => { const x = P().num(v); return v === null || v === undefined ? "—" : (isFinite(x) ? P().fmt(x) : String(v)); };
  // Counts (samples, classes) are integers: printed exactly (1797, not "1800" as fmt's 3 significant digits).
  const count = v => v === null || v === undefined ? "—" : String(v);
  const fmtCI = ci => Array.isArray(ci) && ci.length === 2 ? `[${fmt(ci[0])}, ${fmt(ci[1])}]` : "—";
  const when = s => s ? new Date(s).toLocaleString() : "";
  const items = page => Array.isArray(page) ? page : (page && page.items) || [];

  // ------------------------------------------------------------------ progress (SSE over fetch, polling fallback)
  async function follow(analysisId, onState) {
    let state = await api(`/analyses/${analysisId}`); onState(state);
    const done = s => ["succeeded", "failed", "cancelled"].includes(s.status);
    if (done(state)) return state;
    try {
      const r = await fetch(`/api/v1/analyses/${analysisId}/events`, { headers: { Accept: "text/event-stream", Authorization: "Bearer " + key() } });
      if (r.ok && r.body) {
        const reader = r.body.getReader(), dec = new TextDecoder(); let buf = "";
        for (;;) {
          const { value, done: end } = await reader.read(); if (end) break;
          buf += dec.decode(value, { stream: true });
          let i; while ((i = buf.indexOf("\n\n")) >= 0) {
            const chunk = buf.slice(0, i); buf = buf.slice(i + 2);
            const data = chunk.split("\n").filter(l => l.startsWith("data:")).map(l => l.slice(5).trim()).join("\n");
            if (!data) continue; try { state = Object.assign({}, state, JSON.parse(data)); onState(state); } catch (e) { /* ignore */ }
          }
          if (done(state)) { reader.cancel().catch(() => {}); break; }
        }
      }
    } catch (e) { /* fall back to polling */ }
    while (!done(state)) { await new Promise(r => setTimeout(r, 600)); state = await api(`/analyses/${analysisId}`); onState(state); }
    state = await api(`/analyses/${analysisId}`); onState(state);
    return state;
  }
  function showProgress(s) {
    const p = Math.max(0, Math.min(1, Number(s.status === "succeeded" ? 1 : s.progress || 0)));
    $("#an-progress").value = p; $("#an-pct").textContent = (100 * p).toFixed(0) + "%";
    $("#an-stage").textContent = `${s.status || ""} ${s.stage ? "— " + s.stage : ""}`;
    const res = $("#an-result");
    if (s.status === "succeeded" && s.report_id) { res.innerHTML = ""; res.append("Finished. ", el("a", { href: `/reports/${s.report_id}`, id: "open-report" }, "Open the report")); }
    else if (s.status === "failed") { const e = s.error || {}; res.textContent = "Failed: " + (e.detail || e.title || JSON.stringify(e)); }
    else if (s.status === "cancelled") res.textContent = "Cancelled.";
  }

  // ------------------------------------------------------------------ pages
  // Where to go after signing in: the server already cut ?next= to a path on this origin (data-next); this checks
  // again, so that no value can leave the origin (//host, /\host, scheme:...).
  function sameOrigin(path) {
    try {
      if (typeof path !== "string" || !path.startsWith("/") || path.startsWith("//") || path.includes("\\")) return "/";
      const u = new URL(path, location.origin);
      return u.origin === location.origin ? u.pathname + u.search + u.hash : "/";
    } catch (e) { return "/"; }
  }
  async function signin() {
    const form = $("#signin-form"), input = $("#api-key"), status = $("#signin-status");
    const next = sameOrigin(body.dataset.next || "/");
    const use = async k => {
      localStorage.setItem(KEY, k.trim());
      try { await api("/datasets?limit=1"); location.replace(next); }
      catch (e) { localStorage.removeItem(KEY); flash("That key was not accepted: " + e.message); }
    };
    form.addEventListener("submit", ev => { ev.preventDefault(); use(input.value); });
    // The one-time link printed by `taskgauge serve`: /signin#token=... (the fragment never reaches the server's
    // log). Drop it from the address bar first, then trade it, once, for a key of this browser's own.
    const token = new URLSearchParams(location.hash.slice(1)).get("token");
    if (token) {
      history.replaceState(null, "", location.pathname + location.search);
      status.textContent = "Signing in with the one-time link…";
      let r;
      try {
        r = await fetch("/signin/token", { method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
          body: JSON.stringify({ token }), credentials: "same-origin", cache: "no-store" });
      } catch (e) { status.textContent = ""; flash("cannot reach the taskgauge server: " + e.message); return; }
      if (!r.ok) { let p = {}; try { p = await r.json(); } catch (e) { /* not json */ }
        status.textContent = ""; flash((p.title || "Sign-in link not valid") + ": " + (p.detail || "HTTP " + r.status)); return; }
      const got = await r.json();
      await use(got.key);
    }
  }

  async function index() {
    const tbody = $("#datasets tbody");
    async function load() {
      const ds = items(await api("/datasets?limit=200"));
      tbody.innerHTML = "";
      if (!ds.length) tbody.append(el("tr", {}, el("td", { colspan: 6, text: "No datasets yet — upload one above." })));
      ds.forEach(d => tbody.append(el("tr", {},
        el("td", {}, el("input", { type: "checkbox", class: "pick", value: d.id, "aria-label": "compare " + d.name })),
        el("td", {}, el("a", { href: `/datasets/${d.id}` }, d.name)),
        el("td", { class: "num" }, count(d.n_samples)), el("td", {}, (d.shape || []).join("×")),
        el("td", { class: "num" }, count(d.n_classes)), el("td", {}, when(d.created_at)))));
    }
    $("#upload-form").addEventListener("submit", async ev => {
      ev.preventDefault(); const f = ev.target, st = $("#up-status"), btn = $("#up-submit");
      const fd = new FormData(f); if (!fd.get("name")) fd.set("name", (f.file.files[0] || {}).name || "dataset");
      if (!fd.get("label_column")) fd.delete("label_column");
      if (!fd.get("text_column")) fd.delete("text_column");
      btn.disabled = true; st.textContent = "Uploading…";
      try {
        const d = await api("/datasets", { method: "POST", body: fd });
        f.reset(); await load();  // refresh the list first, so the confirmation never precedes its row
        st.innerHTML = ""; st.append("Uploaded ", el("a", { href: `/datasets/${d.id}`, id: "uploaded-link" }, d.name), ` (${count(d.n_samples)} samples).`);
      } catch (e) { st.textContent = ""; flash("Upload failed: " + e.message); }
      finally { btn.disabled = false; }
    });
    $("#compare-form").addEventListener("submit", ev => {
      const ids = [...document.querySelectorAll(".pick:checked")].map(c => c.value);
      if (ids.length < 2) { ev.preventDefault(); flash("Tick at least two datasets to compare."); return; }
      $("#compare-ids").value = ids.join(",");
    });
    await load();
  }

  const KNOWN = [["mle", true], ["twonn", true], ["gride", true], ["label_sharpness", true], ["inductive_bias", false], ["subspace", false]];
  async function dataset() {
    const id = body.dataset.id;
    const d = await api(`/datasets/${id}`);
    $("#ds-name").textContent = d.name; document.title = d.name + " · taskgauge";
    const form = (d.meta || {}).kind === "text" ? "texts (a worker embeds them with MiniLM, 384-d, when analysed)" : `shape ${(d.shape || []).join("×")}`;
    $("#ds-meta").textContent = `${count(d.n_samples)} samples · ${form} · ${d.n_classes ? d.n_classes + " classes" : "no labels"} · sha256 ${String(d.sha256 || "").slice(0, 12)}`;
    if ((d.meta || {}).kind === "text") {   // a text dataset: a few of its texts
      const box = $("#ds-texts"); box.hidden = false;
      const n = Math.min(5, d.n_samples || 0), idx = Array.from({ length: n }, (_, k) => k);
      if (n) api(`/datasets/${id}/texts?indices=${idx.join(",")}`).then(r => (r.items || []).forEach(t =>
        box.append(el("blockquote", { class: "sample-text", "data-index": t.index }, t.text + (t.truncated ? " …" : ""))))).catch(() => {});
    }
    const choices = $("#est-choices");
    KNOWN.forEach(([n, on]) => { const cb = el("input", { type: "checkbox", name: "estimator", value: n, id: "est-" + n });
      cb.checked = on && (n !== "label_sharpness" || !!d.n_classes); choices.append(el("label", { for: "est-" + n }, cb, n)); });
    const subspaceBox = $("#est-subspace");   // subspace trains a model: show the model-spec field with it
    subspaceBox.addEventListener("change", () => { $("#spec-box").hidden = !subspaceBox.checked; });
    $("#analyse-form").addEventListener("submit", async ev => {
      ev.preventDefault(); flash("");
      const est = {}; document.querySelectorAll("input[name=estimator]:checked").forEach(c => est[c.value] = {});
      const btn = $("#analyse-btn"); btn.disabled = true;
      try {
        const req = { dataset_id: id, estimators: est };
        if (est.subspace) {
          let spec;
          try { spec = JSON.parse($("#model-spec").value); } catch (e) { throw new Error("the model spec is not valid JSON: " + e.message); }
          const ms = await api("/model-specs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name: spec.arch || "model", spec }) });
          req.model_spec_id = ms.id;
        }
        const a = await api("/analyses", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(req) });
        $("#progress-panel").hidden = false;
        const s = await follow(a.id, showProgress);
        if (s.status === "succeeded") await history();
      } catch (e) { flash("Could not start the analysis: " + e.message); }
      finally { btn.disabled = false; }
    });
    async function history() {
      const h = items(await api(`/datasets/${id}/reports`));
      const tbody = $("#history tbody"); tbody.innerHTML = "";
      if (!h.length) tbody.append(el("tr", {}, el("td", { colspan: 5, text: "No reports yet." })));
      h.forEach(r => {
        const vals = Object.entries(r.values || {}).map(([n, v]) => `${n} ${fmt(v.value)}`).join(" · ");
        const flags = el("td", {});
        (r.flags && r.flags.version_change || []).forEach(n => flags.append(el("span", { class: "tag version", title: "estimator version changed since the previous report" }, "new version: " + n)));
        (r.flags && r.flags.drift || []).forEach(n => flags.append(el("span", { class: "tag drift", title: "value moved beyond its confidence interval" }, "drift: " + n)));
        tbody.append(el("tr", {}, el("td", {}, when(r.created_at)),
          el("td", {}, r.schedule_id ? el("span", { class: "tag sched" }, "scheduled") : "manual"),
          el("td", {}, vals), flags, el("td", {}, el("a", { href: `/reports/${r.report_id}` }, "open"))));
      });
      const trends = $("#trends"); trends.innerHTML = "";
      const names = [...new Set(h.flatMap(r => Object.keys(r.values || {})))];
      if (!names.length) trends.append(el("p", { class: "notcomputed", text: "No reports yet." }));
      names.forEach(n => {
        const fig = el("figure", { class: "plot trend", "data-estimator": n }, el("figcaption", {}, `${n} over time`), el("div", { class: "canvas" }));
        trends.append(fig);
        const pts = h.filter(r => r.values && r.values[n]).map(r => { const v = r.values[n], ci = v.ci || [];
          return { x: Date.parse(r.created_at), y: v.value, lo: ci[0], hi: ci[1] }; }).sort((a, b) => a.x - b.x);
        P().line($(".canvas", fig), { series: [{ name: n, points: pts, nolegend: true }], timex: true, ylabel: n, xlabel: "report time" });
      });
    }
    await history();
  }

  async function analysis() { const s = await follow(body.dataset.id, showProgress); return s; }

  // ---------- report plots: each tolerates missing keys ("not computed")
  function pick(obj, keys) { for (const k of keys) if (obj && obj[k] !== undefined && obj[k] !== null) return obj[k]; return undefined; }
  function rows(v, xk, yk) {   // list of {x:..,y:..} from a list of objects, a dict of arrays, or a {x: y} map
    if (Array.isArray(v)) return v.map(r => Array.isArray(r) ? { x: r[0], y: r[1] } : { x: pick(r, xk), y: pick(r, yk), r });
    if (v && typeof v === "object") {
      const xs = pick(v, xk), ys = pick(v, yk);
      if (Array.isArray(xs) && Array.isArray(ys)) return xs.map((x, i) => ({ x, y: ys[i], r: Object.fromEntries(Object.entries(v).filter(([, a]) => Array.isArray(a)).map(([k, a]) => [k, a[i]])) }));
      return Object.entries(v).filter(([k]) => isFinite(Number(k))).map(([k, y]) => ({ x: Number(k), y }));
    }
    return [];
  }
  function plotMLE(res) {
    const c = $("#plot-mle .canvas"), r = res.mle;
    if (!r) return P().notComputed(c, "not computed (mle was not run)");
    const pts = rows(pick(r.details, ["per_k", "curve", "by_k"]), ["k"], ["value", "id", "estimate"]);
    const k = r.params && r.params.k;
    return P().line(c, { series: [{ name: "MLE", points: pts, nolegend: true }], xlabel: "k (neighbours)", ylabel: "intrinsic dimension",
      vlines: k ? [{ x: k, label: "k = " + k }] : [], empty: "not computed (no per-k estimates in the report)" });
  }
  function plotGride(res) {
    const c = $("#plot-gride .canvas"), r = res.gride;
    if (!r) return P().notComputed(c, "not computed (gride was not run)");
    const pts = rows(pick(r.details, ["curve"]), ["scale", "n2", "n"], ["id", "value"]).map(p => {
      const e = P().num(pick(p.r || {}, ["err", "std", "error"])); return Object.assign(p, isFinite(e) ? { lo: P().num(p.y) - e, hi: P().num(p.y) + e } : {}); });
    return P().line(c, { series: [{ name: "Gride", points: pts, nolegend: true }], logx: true, xlabel: "scale (mean neighbour distance)", ylabel: "intrinsic dimension", empty: "not computed (no Gride curve in the report)" });
  }
  function plotTwoNN(res) {
    const c = $("#plot-twonn .canvas"), r = res.twonn;
    if (!r) return P().notComputed(c, "not computed (twonn was not run)");
    const pts = rows(pick(r.details, ["decimation"]), ["n", "n_samples", "size", "scale", "fraction"], ["id", "value", "mean"]).map(p => {
      const e = P().num(pick(p.r || {}, ["err", "sd", "std"])); return Object.assign(p, isFinite(e) ? { lo: P().num(p.y) - e, hi: P().num(p.y) + e } : {}); });
    return P().line(c, { series: [{ name: "TwoNN", points: pts, nolegend: true }], logx: true, xlabel: "samples used (decimation)", ylabel: "intrinsic dimension", empty: "not computed (no decimation curve in the report)" });
  }
  function plotSubspace(res) {
    const c = $("#plot-subspace .canvas"), r = res.subspace;
    if (!r) return P().notComputed(c, "not computed (subspace was not run)");
    const curve = pick(r.details, ["curve"]) || [];
    const mean = [], seeds = [];
    (Array.isArray(curve) ? curve : []).forEach(p => {
      const m = P().num(p.mean), s = P().num(p.std), un = p.converged === false;   // hollow: hit the epochs cap
      mean.push({ x: p.d, y: p.mean, lo: isFinite(s) ? m - s : undefined, hi: isFinite(s) ? m + s : undefined,
        open: un, note: un ? `${p.n_unconverged || "some"} seed(s) hit the epochs cap` : undefined });
      (p.seeds || []).forEach((v, i) => seeds.push({ x: p.d, y: v, open: (p.seeds_converged || [])[i] === false })); });
    const b = pick(r.details, ["baseline"]); let line90;
    if (b !== undefined) {   // details.baseline: {value, threshold (the fraction, 0.9), level = threshold × value}
      const obj = typeof b === "object", lv = obj ? P().num(pick(b, ["level"])) : NaN;
      const frac = obj && isFinite(P().num(pick(b, ["threshold"]))) ? P().num(pick(b, ["threshold"])) : 0.9;
      line90 = isFinite(lv) ? lv : frac * P().num(obj ? pick(b, ["value", "mean", "accuracy", "performance"]) : b); }
    return P().line(c, { series: [{ name: "mean ± std", points: mean }, { name: "seeds", points: seeds, dotsOnly: true, r: 2, alpha: 0.5 }],
      logx: true, xlabel: "subspace dimension d", ylabel: "performance", openLabel: "unconverged (hit the epochs cap)",
      hlines: isFinite(line90) ? [{ y: line90, label: "90% of baseline" }] : [],
      vlines: isFinite(P().num(r.value)) ? [{ x: r.value, label: "d_int90 " + (pick(r.details, ["d_int90_display"]) || "") }] : [], empty: "not computed (no subspace curve in the report)" });
  }
  function plotRepr(res) {   // repr_id: ID against layer (Ansuini's profile), layers with d_repr > d_data flagged
    const c = $("#plot-repr .canvas"), r = res.repr_id;
    if (!r) return P().notComputed(c, "not computed (repr_id was not run)");
    const prof = pick(r.details, ["profile"]);
    const pts = (Array.isArray(prof) ? prof : []).map((p, i) => ({ x: i + 1, y: p.id, label: p.layer, over: p.exceeds_d_data === true }));
    const over = pts.filter(p => p.over && isFinite(P().num(p.y))), dd = P().num(pick(r.details, ["d_data"]));
    const series = [{ name: "d_repr", points: pts, nolegend: !over.length }];
    if (over.length) series.push({ name: "d_repr > d_data", points: over, dotsOnly: true, r: 5, color: "#b42318" });
    return P().line(c, { series, xlabel: "layer", ylabel: "intrinsic dimension", xticks: pts.map(p => ({ x: p.x, label: p.label })),
      hlines: isFinite(dd) ? [{ y: dd, label: "d_data " + fmt(dd) }] : [], empty: "not computed (no per-layer profile in the report)" });
  }
  function plotSharpness(res, report) {
    const c = $("#plot-sharpness .canvas"), r = res.label_sharpness;
    if (!r) return P().notComputed(c, "not computed (label_sharpness was not run)");
    const m = pick(r.details, ["class_min_distance"]);
    const labels = pick(r.details, ["classes"]) || (report.dataset || {}).classes;
    return P().heatmap(c, { matrix: Array.isArray(m) ? m : [], labels, empty: "not computed (no class-to-class distances in the report)" });
  }
  function plotPairs(res, report) {
    const c = $("#plot-pairs .canvas"), r = res.label_sharpness;
    if (!r) return P().notComputed(c, "not computed (label_sharpness was not run)");
    const ds = report.dataset || {}; const shape = ds.shape || [];
    const pairs = (pick(r.details, ["pairs", "offending_pairs", "closest_pairs"]) || []).slice(0, 12);
    if (!pairs.length) return P().notComputed(c, "not computed (no offending pairs in the report)");
    c.innerHTML = ""; const wrap = el("div", { class: "pairs" }); c.append(wrap);
    const image = shape.length === 4 && ds.id, text = !!ds.embedding && ds.id;
    pairs.forEach(p => {
      const i = Array.isArray(p) ? p[0] : pick(p, ["i", "a", "index_a", "first"]), j = Array.isArray(p) ? p[1] : pick(p, ["j", "b", "index_b", "second"]);
      const dist = Array.isArray(p) ? p[2] : pick(p, ["distance", "dist", "d"]);
      const li = Array.isArray(p) ? undefined : pick(p, ["label_i", "y_i", "class_i"]), lj = Array.isArray(p) ? undefined : pick(p, ["label_j", "y_j", "class_j"]);
      const box = el("div", { class: "pair" });
      if (image) [i, j].forEach(k => { const img = el("img", { alt: `sample ${k}`, class: "thumb", "data-index": k }); box.append(img); thumb(img, ds.id, k); });
      if (text) { const sides = el("div", { class: "text-pair" }); box.append(sides); pairTexts(sides, ds.id, [i, j]); }
      box.append(el("div", {}, `#${i}${li !== undefined ? " (" + li + ")" : ""} ↔ #${j}${lj !== undefined ? " (" + lj + ")" : ""}`), el("div", {}, "distance " + fmt(dist)));
      wrap.append(box);
    });
    if (!image && !text) wrap.append(el("p", { class: "meta" }, "Thumbnails are shown for image datasets, texts for text datasets."));
    return wrap;
  }
  async function pairTexts(box, datasetId, indices) {   // the two texts of a K_F pair, side by side
    try {
      const r = await api(`/datasets/${datasetId}/texts?indices=${indices.join(",")}`);
      (r.items || []).forEach(t => box.append(el("blockquote", { class: "sample-text", "data-index": t.index }, t.text + (t.truncated ? " …" : ""))));
    } catch (e) { box.append(el("p", { class: "meta" }, "texts could not be loaded")); }
  }
  async function thumb(img, datasetId, index) {
    try {
      const r = await fetch(`/api/v1/datasets/${datasetId}/samples/${index}.png`, { headers: { Authorization: "Bearer " + key() } });
      if (!r.ok) throw new Error(r.status); img.src = URL.createObjectURL(await r.blob());
    } catch (e) { img.alt = `sample ${index} (could not load)`; }
  }
  async function report() {
    const id = body.dataset.id, rep = await api(`/reports/${id}`), res = rep.results || {}, ds = rep.dataset || {};
    $("#rp-title").textContent = `Report — ${ds.name || "dataset"}`;
    $("#rp-meta").textContent = `${when(rep.created_at)} · ${count(ds.n_samples)} samples · shape ${(ds.shape || []).join("×")} · ${(rep.environment || {}).device || ""} · taskgauge ${rep.taskgauge_version || ""}`;
    if (ds.id) $("#rp-dataset").href = `/datasets/${ds.id}`;
    const tbody = $("#results tbody");
    Object.entries(res).forEach(([n, r]) => tbody.append(el("tr", {}, el("th", { scope: "row" }, n), el("td", { class: "num" }, fmt(r.value)),
      el("td", { class: "num" }, fmtCI(r.ci)), el("td", {}, r.version || ""), el("td", { class: "num" }, fmt(r.seconds)), el("td", {}, (r.warnings || []).join("; ")))));
    const ul = $("#interpretation"); (rep.interpretation || []).forEach(t => ul.append(el("li", {}, t)));
    for (const f of [plotMLE, plotGride, plotTwoNN, plotSubspace, plotRepr, plotSharpness, plotPairs]) {
      try { f(res, rep); } catch (e) { console.error(e); }
    }
    $("#download").addEventListener("click", () => {
      const a = el("a", { href: URL.createObjectURL(new Blob([JSON.stringify(rep, null, 2)], { type: "application/json" })), download: `taskgauge-report-${id}.json` });
      document.body.append(a); a.click(); a.remove();
    });
    body.dataset.ready = "1";
  }

  async function latestReport(datasetId) {
    const h = items(await api(`/datasets/${datasetId}/reports`));
    if (!h.length) return null;
    h.sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at));
    return api(`/reports/${h[0].report_id}`);
  }
  async function compare() {
    const params = new URLSearchParams(location.search);
    const wanted = (params.get("datasets") || "").split(",").filter(Boolean);
    const all = items(await api("/datasets?limit=200")), box = $("#cmp-choices"); box.innerHTML = "";
    all.forEach(d => { const cb = el("input", { type: "checkbox", name: "ds", value: d.id, id: "cmp-" + d.id }); cb.checked = wanted.includes(d.id);
      box.append(el("label", { for: "cmp-" + d.id }, cb, d.name)); });
    $("#compare-pick").addEventListener("submit", ev => { ev.preventDefault();
      const ids = [...document.querySelectorAll("input[name=ds]:checked")].map(c => c.value);
      location.href = "/compare?datasets=" + ids.join(","); });
    if (wanted.length < 1) { $("#compare-table tbody").append(el("tr", {}, el("td", { text: "Pick two or more datasets." }))); return; }
    const reps = (await Promise.all(wanted.map(latestReport))).filter(Boolean);
    const names = [...new Set(reps.flatMap(r => Object.keys(r.results || {})))];
    const thead = $("#compare-table thead"), tbody = $("#compare-table tbody");
    thead.append(el("tr", {}, el("th", { scope: "col" }, "estimator"), reps.map(r => el("th", { scope: "col" }, el("a", { href: `/reports/${r.report_id}` }, (r.dataset || {}).name || r.report_id)))));
    names.forEach(n => tbody.append(el("tr", {}, el("th", { scope: "row" }, n), reps.map(r => { const x = (r.results || {})[n];
      return el("td", { class: "num" }, x ? `${fmt(x.value)} ${x.ci ? fmtCI(x.ci) : ""}` : "not computed"); }))));
    const plots = $("#compare-plots");
    names.forEach(n => { const fig = el("figure", { class: "plot" }, el("figcaption", {}, n), el("div", { class: "canvas" })); plots.append(fig);
      const vals = reps.map(r => ((r.results || {})[n] || {}).value), ci = reps.map(r => ((r.results || {})[n] || {}).ci || []);
      P().bars($(".canvas", fig), { groups: reps.map(r => (r.dataset || {}).name), series: [{ name: n, values: vals, lo: ci.map(c => c[0]), hi: ci.map(c => c[1]) }], ylabel: n }); });
    body.dataset.ready = "1";
  }

  const pages = { signin, index, dataset, analysis, report, compare };
  document.addEventListener("DOMContentLoaded", async () => {
    if (page !== "signin" && !key()) { location.href = "/signin?next=" + encodeURIComponent(location.pathname + location.search); return; }
    if (page !== "signin") { $("#who").textContent = "signed in"; const so = $("#signout"); so.hidden = false;
      so.addEventListener("click", () => { localStorage.removeItem(KEY); location.href = "/signin"; }); }
    try { if (pages[page]) await pages[page](); body.dataset.loaded = "1"; }
    catch (e) { if (e.message !== "signing in") flash(e.message); body.dataset.loaded = "error"; }
  });
})();
