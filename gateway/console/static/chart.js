// A time-series chart on a canvas: lines of one unit on one axis, each with its
// min/max band when the data are buckets, a crosshair that reads the values out,
// a marker for a moment (an alarm), and drag-to-zoom (Grafana's gesture).
//
// series: [{label, color, points: [[ms, value]], band: [[ms, min, max]] | null, step: bool}]

import { fmtNumber, fmtTime } from "./i18n.js";

export const COLORS = ["#1f6fb2", "#c0392b", "#2e8b57", "#8e44ad", "#d35400", "#16a085", "#7f8c8d", "#b8860b"];

function niceStep(span, target) {
  const raw = span / Math.max(1, target);
  const mag = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}

const TIME_STEPS = [1, 5, 15, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 30 * 86400].map((s) => s * 1000);

export class Chart {
  constructor(container, { unit = "", onZoom, height = 280, label = "" } = {}) {
    this.container = container;
    this.unit = unit;
    this.onZoom = onZoom;
    this.series = [];
    this.marker = null;
    this.canvas = document.createElement("canvas");
    this.canvas.className = "chart-canvas";
    this.canvas.style.height = `${height}px`;
    this.canvas.setAttribute("role", "img");
    this.canvas.setAttribute("aria-label", label);
    this.tip = document.createElement("div");
    this.tip.className = "chart-tip";
    this.tip.hidden = true;
    container.classList.add("chart");
    container.append(this.canvas, this.tip);
    this.drag = null;
    this.hover = null;
    this.canvas.addEventListener("pointermove", (e) => this.pointer(e));
    this.canvas.addEventListener("pointerleave", () => { this.hover = null; this.tip.hidden = true; this.draw(); });
    this.canvas.addEventListener("pointerdown", (e) => { if (e.button === 0 && e.pointerType === "mouse") this.drag = { x0: this.xOf(e), x1: this.xOf(e) }; });
    this.canvas.addEventListener("pointerup", () => this.endDrag());
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(container);
  }

  set(series, { start, end, marker = null, unit } = {}) {
    this.series = series;
    this.start = start;
    this.end = end;
    this.marker = marker;
    if (unit !== undefined) this.unit = unit;
    this.draw();
  }

  xOf(e) {
    return e.clientX - this.canvas.getBoundingClientRect().left;
  }

  pointer(e) {
    const x = this.xOf(e);
    if (this.drag) this.drag.x1 = x;
    this.hover = x;
    this.draw();
  }

  endDrag() {
    const d = this.drag;
    this.drag = null;
    if (d && Math.abs(d.x1 - d.x0) > 8 && this.onZoom) {
      const [a, b] = [Math.min(d.x0, d.x1), Math.max(d.x0, d.x1)];
      this.onZoom(this.timeAt(a), this.timeAt(b));
    } else {
      this.draw();
    }
  }

  timeAt(x) {
    const { left, width } = this.plot;
    return this.start + ((x - left) / width) * (this.end - this.start);
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    const hgt = c.clientHeight;
    if (!w || !hgt) return;
    c.width = Math.round(w * dpr);
    c.height = Math.round(hgt * dpr);
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, hgt);
    g.font = "12px system-ui, sans-serif";
    // Value range over lines and bands.
    let lo = Infinity, hi = -Infinity;
    for (const s of this.series) {
      for (const [, v] of s.points) { if (v < lo) lo = v; if (v > hi) hi = v; }
      for (const [, a, b] of s.band || []) { if (a < lo) lo = a; if (b > hi) hi = b; }
    }
    if (!Number.isFinite(lo)) { lo = 0; hi = 1; }
    if (lo === hi) { lo -= 1; hi += 1; }
    const ystep = niceStep(hi - lo, Math.max(2, Math.floor(hgt / 50)));
    lo = Math.floor(lo / ystep) * ystep;
    hi = Math.ceil(hi / ystep) * ystep;
    const ylabels = [];
    for (let v = lo; v <= hi + ystep / 2; v += ystep) ylabels.push([v, fmtNumber(v)]);
    const left = 8 + Math.max(...ylabels.map(([, s]) => g.measureText(s).width));
    const plot = { left, top: 18, width: w - left - 10, height: hgt - 18 - 24 };
    this.plot = plot;
    const X = (ms) => plot.left + ((ms - this.start) / (this.end - this.start)) * plot.width;
    const Y = (v) => plot.top + (1 - (v - lo) / (hi - lo)) * plot.height;
    // Grid and axes.
    g.strokeStyle = "#e3e6ea"; g.fillStyle = "#4a5560"; g.lineWidth = 1;
    g.textAlign = "right"; g.textBaseline = "middle";
    for (const [v, s] of ylabels) {
      const y = Math.round(Y(v)) + 0.5;
      g.beginPath(); g.moveTo(plot.left, y); g.lineTo(plot.left + plot.width, y); g.stroke();
      g.fillText(s, plot.left - 4, y);
    }
    if (this.unit) { g.textAlign = "left"; g.fillText(this.unit, 2, 8); }
    const span = this.end - this.start;
    const tstep = TIME_STEPS.find((s) => span / s <= Math.max(2, plot.width / 90)) || TIME_STEPS.at(-1);
    const withDate = span > 86400000;
    g.textAlign = "center"; g.textBaseline = "top";
    // Ticks at whole steps in the local day (UTC offset of the browser is enough for spacing).
    const offset = new Date(this.start).getTimezoneOffset() * 60000;
    for (let ms = Math.ceil((this.start - offset) / tstep) * tstep + offset; ms <= this.end; ms += tstep) {
      const x = Math.round(X(ms)) + 0.5;
      g.strokeStyle = "#eef0f2";
      g.beginPath(); g.moveTo(x, plot.top); g.lineTo(x, plot.top + plot.height); g.stroke();
      g.fillText(fmtTime(new Date(ms), withDate), x, plot.top + plot.height + 5);
    }
    g.save();
    g.beginPath(); g.rect(plot.left, plot.top - 2, plot.width, plot.height + 4); g.clip();
    this.series.forEach((s, i) => {
      const color = s.color || COLORS[i % COLORS.length];
      if (s.band && s.band.length) {
        g.fillStyle = color; g.globalAlpha = 0.15;
        g.beginPath();
        s.band.forEach(([t, a], k) => (k ? g.lineTo(X(t), Y(a)) : g.moveTo(X(t), Y(a))));
        for (let k = s.band.length - 1; k >= 0; k--) g.lineTo(X(s.band[k][0]), Y(s.band[k][2]));
        g.closePath(); g.fill(); g.globalAlpha = 1;
      }
      g.strokeStyle = color; g.lineWidth = 1.6;
      g.beginPath();
      let prev = null;
      for (const [t, v] of s.points) {
        const [x, y] = [X(t), Y(v)];
        if (prev === null) g.moveTo(x, y);
        else if (s.step) { g.lineTo(x, prev); g.lineTo(x, y); } else g.lineTo(x, y);
        prev = y;
      }
      g.stroke();
      if (s.points.length === 1) { g.fillStyle = color; g.fillRect(X(s.points[0][0]) - 2, Y(s.points[0][1]) - 2, 4, 4); }
    });
    g.restore();
    if (this.marker) {
      const x = Math.round(X(this.marker.at)) + 0.5;
      g.strokeStyle = "#c0392b"; g.setLineDash([4, 3]);
      g.beginPath(); g.moveTo(x, plot.top); g.lineTo(x, plot.top + plot.height); g.stroke(); g.setLineDash([]);
      g.fillStyle = "#c0392b"; g.textAlign = "left"; g.textBaseline = "top";
      g.fillText(this.marker.label, Math.min(x + 3, plot.left + plot.width - g.measureText(this.marker.label).width), 2);
    }
    if (this.drag) {
      g.fillStyle = "rgba(31,111,178,0.12)";
      g.fillRect(Math.min(this.drag.x0, this.drag.x1), plot.top, Math.abs(this.drag.x1 - this.drag.x0), plot.height);
    }
    this.drawHover(g, X, Y);
  }

  drawHover(g, X, Y) {
    const x = this.hover;
    if (x === null || x < this.plot.left || x > this.plot.left + this.plot.width) { this.tip.hidden = true; return; }
    const at = this.timeAt(x);
    const lines = [fmtTime(new Date(at), this.end - this.start > 86400000)];
    this.series.forEach((s, i) => {
      if (!s.points.length) return;
      let best = s.points[0];
      for (const p of s.points) if (Math.abs(p[0] - at) < Math.abs(best[0] - at)) best = p;
      g.fillStyle = s.color || COLORS[i % COLORS.length];
      g.beginPath(); g.arc(X(best[0]), Y(best[1]), 3, 0, 2 * Math.PI); g.fill();
      lines.push(`${s.label}: ${fmtNumber(best[1])} ${this.unit}`);
    });
    g.strokeStyle = "#9aa5b1";
    g.beginPath(); g.moveTo(x + 0.5, this.plot.top); g.lineTo(x + 0.5, this.plot.top + this.plot.height); g.stroke();
    this.tip.textContent = lines.join("\n");
    this.tip.hidden = false;
    const right = x > this.plot.left + this.plot.width / 2;
    this.tip.style.left = right ? "" : `${x + 12}px`;
    this.tip.style.right = right ? `${this.canvas.clientWidth - x + 12}px` : "";
  }

  destroy() {
    this.resize.disconnect();
  }
}
