/* taskgauge — tiny SVG plotting (no dependencies, works offline).
 * TGPlot.line(el, {series:[{name, points:[{x, y, lo?, hi?, open?, note?, label?}], dots?}], xlabel, ylabel, logx, hlines:[{y,label}], vlines,
 *              openLabel, xticks:[{x, label}]})   — open: a hollow marker (its meaning, openLabel, is noted in the plot; note: per-point
 *              tooltip); label: the point's name in its tooltip; xticks: named ticks instead of numbers (a categorical x axis)
 * TGPlot.heatmap(el, {matrix, labels, title})
 * TGPlot.bars(el, {groups:[name], series:[{name, values:[v|null], lo?:[], hi?:[]}], ylabel})
 */
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#0a58ca", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#1098ad", "#c2255c", "#5c940d"];
  function node(tag, attrs, parent) {
    const n = document.createElementNS(NS, tag);
    for (const k in attrs || {}) n.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(n);
    return n;
  }
  function text(parent, x, y, s, attrs) {
    const t = node("text", Object.assign({ x: x, y: y }, attrs || {}), parent);
    t.textContent = s; return t;
  }
  function num(v) {
    if (v === null || v === undefined || v === "") return NaN;
    if (v === "inf") return Infinity; if (v === "-inf") return -Infinity; if (v === "nan") return NaN;
    return Number(v);
  }
  function fmt(v) {
    if (!isFinite(v)) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
    return Number(v.toPrecision(3)).toString();
  }
  function ticks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; lo = lo - 1; }
    const step0 = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= step0) || step0;
    const out = []; for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }
  function frame(el, w, h, title) {
    el.innerHTML = "";
    const svg = node("svg", { viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": title || "plot" }, el);
    if (title) node("title", {}, svg).textContent = title;
    return svg;
  }
  function notComputed(el, why) {
    el.innerHTML = ""; const p = document.createElement("p"); p.className = "notcomputed";
    p.textContent = why || "not computed"; el.appendChild(p); return null;
  }

  function line(el, opt) {
    const series = (opt.series || []).map(s => ({ ...s, points: (s.points || []).map(p => ({
      x: num(p.x), y: num(p.y), lo: num(p.lo), hi: num(p.hi), open: !!p.open, note: p.note, label: p.label })).filter(p => isFinite(p.x) && isFinite(p.y) && (!opt.logx || p.x > 0)) }))
      .filter(s => s.points.length);
    if (!series.length) return notComputed(el, opt.empty);
    const W = 460, H = 280, m = { l: 52, r: 14, t: 12, b: 42 };
    const svg = frame(el, W, H, opt.title || opt.ylabel);
    const tx = v => opt.logx ? Math.log10(v) : v;
    let xs = [], ys = [];
    series.forEach(s => s.points.forEach(p => { xs.push(tx(p.x)); ys.push(p.y);
      if (isFinite(p.lo)) ys.push(p.lo); if (isFinite(p.hi)) ys.push(p.hi); }));
    (opt.hlines || []).forEach(l => { if (isFinite(num(l.y))) ys.push(num(l.y)); });
    let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    const pad = (y1 - y0) * 0.08 || Math.abs(y0) * 0.1 || 1; y0 -= pad; y1 += pad;
    if (opt.ymin !== undefined) y0 = Math.min(y0, opt.ymin);
    const X = v => m.l + (tx(v) - x0) / (x1 - x0) * (W - m.l - m.r);
    const Xr = v => m.l + (v - x0) / (x1 - x0) * (W - m.l - m.r);
    const Y = v => H - m.b - (v - y0) / (y1 - y0) * (H - m.t - m.b);
    const ax = node("g", { class: "axis" }, svg);
    ticks(y0, y1, 5).forEach(v => { node("line", { class: "gridline", x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v) }, ax);
      text(ax, m.l - 6, Y(v) + 4, fmt(v), { "text-anchor": "end" }); });
    if (opt.xticks) {   // named ticks (e.g. layers); every k-th one when they would crowd
      const every = Math.max(1, Math.ceil(opt.xticks.length / 8));
      opt.xticks.forEach((t, i) => { if (i % every || !isFinite(num(t.x))) return;
        text(ax, X(num(t.x)), H - m.b + 16, String(t.label).slice(0, 14), { "text-anchor": "middle", class: "xtick" }); });
    } else if (opt.timex) {
      const n = Math.min(4, xs.length); for (let i = 0; i < n; i++) { const v = x0 + (x1 - x0) * i / Math.max(1, n - 1);
        text(ax, Xr(v), H - m.b + 16, new Date(v).toISOString().slice(0, 16).replace("T", " "), { "text-anchor": "middle" }); }
    } else if (opt.logx) {
      const mult = (x1 - x0) < 1.5 ? [1, 2, 5] : [1];  // short ranges get 1-2-5 ticks
      for (let e = Math.floor(x0); e <= Math.ceil(x1); e++) mult.forEach(mm => { const lv = e + Math.log10(mm);
        if (lv < x0 - 1e-9 || lv > x1 + 1e-9) return;
        node("line", { class: "gridline", x1: Xr(lv), x2: Xr(lv), y1: m.t, y2: H - m.b }, ax);
        text(ax, Xr(lv), H - m.b + 16, fmt(Math.pow(10, lv)), { "text-anchor": "middle" }); });
    } else {
      ticks(x0, x1, 6).forEach(v => text(ax, Xr(v), H - m.b + 16, fmt(v), { "text-anchor": "middle" }));
    }
    node("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }, ax);
    node("line", { x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }, ax);
    if (opt.xlabel) text(svg, (m.l + W - m.r) / 2, H - 6, opt.xlabel + (opt.logx ? " (log)" : ""), { "text-anchor": "middle" });
    if (opt.ylabel) text(svg, 12, (m.t + H - m.b) / 2, opt.ylabel, { "text-anchor": "middle", transform: `rotate(-90 12 ${(m.t + H - m.b) / 2})` });
    (opt.hlines || []).forEach(l => { const y = num(l.y); if (!isFinite(y)) return;
      node("line", { x1: m.l, x2: W - m.r, y1: Y(y), y2: Y(y), stroke: "#b42318", "stroke-dasharray": "5 4", class: "hline" }, svg);
      if (l.label) text(svg, W - m.r - 4, Y(y) - 4, l.label, { "text-anchor": "end", fill: "#b42318" }); });
    (opt.vlines || []).forEach(l => { const x = num(l.x); if (!isFinite(x)) return;
      node("line", { x1: X(x), x2: X(x), y1: m.t, y2: H - m.b, stroke: "#2b8a3e", "stroke-dasharray": "3 3" }, svg);
      if (l.label) text(svg, X(x) + 4, m.t + 10, l.label, { fill: "#2b8a3e" }); });
    series.forEach((s, i) => {
      const c = s.color || COLORS[i % COLORS.length], g = node("g", { class: "series", "data-name": s.name || "" }, svg);
      s.points.forEach(p => { if (isFinite(p.lo) && isFinite(p.hi)) {
        node("line", { x1: X(p.x), x2: X(p.x), y1: Y(p.lo), y2: Y(p.hi), stroke: c, "stroke-width": 1.2, class: "errbar" }, g);
        node("line", { x1: X(p.x) - 3, x2: X(p.x) + 3, y1: Y(p.lo), y2: Y(p.lo), stroke: c }, g);
        node("line", { x1: X(p.x) - 3, x2: X(p.x) + 3, y1: Y(p.hi), y2: Y(p.hi), stroke: c }, g); } });
      if (!s.dotsOnly) node("polyline", { points: s.points.map(p => `${X(p.x)},${Y(p.y)}`).join(" "), fill: "none", stroke: c, "stroke-width": 2 }, g);
      s.points.forEach(p => { const d = node("circle", p.open  // open (hollow) marker: e.g. an unconverged trial
          ? { cx: X(p.x), cy: Y(p.y), r: (s.r || 3) + 0.5, fill: "#fff", stroke: c, "stroke-width": 1.5, class: "open" }
          : { cx: X(p.x), cy: Y(p.y), r: s.r || 3, fill: c, "fill-opacity": s.alpha || 1 }, g);
        node("title", {}, d).textContent = `${s.name ? s.name + ": " : ""}${p.label !== undefined ? p.label : opt.timex ? new Date(p.x).toISOString() : fmt(p.x)} → ${fmt(p.y)}`
          + (p.open ? ` (${p.note || opt.openLabel || "open marker"})` : ""); });
    });
    if (series.some(s => s.points.some(p => p.open)))  // say what a hollow marker means
      text(svg, W - m.r - 4, H - m.b - 6, "○ " + (opt.openLabel || "open marker"), { "text-anchor": "end", class: "open-note" });
    const named = series.filter(s => s.name && !s.nolegend);
    named.forEach((s, i) => { const y = m.t + 12 + i * 14, c = s.color || COLORS[series.indexOf(s) % COLORS.length];
      node("rect", { x: m.l + 8, y: y - 8, width: 10, height: 10, fill: c }, svg); text(svg, m.l + 22, y + 1, s.name); });
    return svg;
  }

  function heatmap(el, opt) {
    const M = (opt.matrix || []).map(r => (r || []).map(num));
    if (!M.length) return notComputed(el, opt.empty);
    const n = M.length, labels = opt.labels || M.map((_, i) => String(i));
    const W = 460, cell = Math.max(6, Math.min(48, Math.floor(330 / n))), m = { l: 70, t: 12 };
    const H = m.t + cell * n + 60;
    const svg = frame(el, W, H, opt.title || "heat map");
    const vals = M.flat().filter(v => isFinite(v)), lo = Math.min(...vals), hi = Math.max(...vals);
    const col = v => { if (!isFinite(v)) return "#ddd"; const t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
      // dark = small distance (sharp labels), light = far apart
      const r = Math.round(20 + 230 * t), g = Math.round(40 + 200 * t), b = Math.round(120 + 120 * t); return `rgb(${r},${g},${b})`; };
    M.forEach((row, i) => row.forEach((v, j) => {
      const r = node("rect", { x: m.l + j * cell, y: m.t + i * cell, width: cell - 1, height: cell - 1, fill: col(v), class: "cell" }, svg);
      node("title", {}, r).textContent = `${labels[i]} ↔ ${labels[j]}: ${fmt(v)}`;
      if (cell >= 34 && isFinite(v)) text(svg, m.l + j * cell + cell / 2, m.t + i * cell + cell / 2 + 4, fmt(v),
        { "text-anchor": "middle", fill: (hi > lo && (v - lo) / (hi - lo) < 0.5) ? "#fff" : "#000" });
    }));
    if (n <= 20) labels.forEach((s, i) => { text(svg, m.l - 4, m.t + i * cell + cell / 2 + 4, String(s).slice(0, 10), { "text-anchor": "end" });
      text(svg, m.l + i * cell + cell / 2, m.t + n * cell + 12, String(s).slice(0, 6), { "text-anchor": "middle" }); });
    text(svg, m.l, H - 14, `min distance: dark ${fmt(lo)} … light ${fmt(hi)}`);
    return svg;
  }

  function bars(el, opt) {
    const groups = opt.groups || [], series = opt.series || [];
    const vals = series.flatMap(s => s.values.map(num).concat((s.hi || []).map(num))).filter(isFinite);
    if (!groups.length || !vals.length) return notComputed(el, opt.empty);
    const W = 460, H = 260, m = { l: 52, r: 10, t: 14, b: 46 };
    const svg = frame(el, W, H, opt.title || opt.ylabel);
    const y1 = Math.max(...vals, 0) * 1.1 || 1, y0 = Math.min(0, ...vals);
    const Y = v => H - m.b - (v - y0) / (y1 - y0) * (H - m.t - m.b);
    const gw = (W - m.l - m.r) / groups.length, bw = Math.min(40, gw * 0.8 / series.length);
    const ax = node("g", { class: "axis" }, svg);
    ticks(y0, y1, 5).forEach(v => { node("line", { class: "gridline", x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v) }, ax);
      text(ax, m.l - 6, Y(v) + 4, fmt(v), { "text-anchor": "end" }); });
    node("line", { x1: m.l, x2: W - m.r, y1: Y(0), y2: Y(0) }, ax);
    groups.forEach((g, gi) => text(svg, m.l + gw * gi + gw / 2, H - m.b + 16, String(g).slice(0, 18), { "text-anchor": "middle" }));
    series.forEach((s, si) => s.values.forEach((v0, gi) => { const v = num(v0); if (!isFinite(v)) return;
      const x = m.l + gw * gi + (gw - bw * series.length) / 2 + si * bw, c = COLORS[si % COLORS.length];
      const r = node("rect", { x: x, y: Math.min(Y(v), Y(0)), width: bw - 2, height: Math.abs(Y(0) - Y(v)), fill: c, class: "bar" }, svg);
      node("title", {}, r).textContent = `${s.name} — ${groups[gi]}: ${fmt(v)}`;
      const lo = num((s.lo || [])[gi]), hi = num((s.hi || [])[gi]);
      if (isFinite(lo) && isFinite(hi)) node("line", { x1: x + bw / 2 - 1, x2: x + bw / 2 - 1, y1: Y(lo), y2: Y(hi), stroke: "#000" }, svg); }));
    if (series.length > 1) series.forEach((s, i) => { node("rect", { x: m.l + 8 + i * 110, y: H - 16, width: 10, height: 10, fill: COLORS[i % COLORS.length] }, svg);
      text(svg, m.l + 22 + i * 110, H - 7, String(s.name).slice(0, 14)); });
    if (opt.ylabel) text(svg, 12, (m.t + H - m.b) / 2, opt.ylabel, { "text-anchor": "middle", transform: `rotate(-90 12 ${(m.t + H - m.b) / 2})` });
    return svg;
  }

  window.TGPlot = { line, heatmap, bars, notComputed, num, fmt, COLORS };
})();
