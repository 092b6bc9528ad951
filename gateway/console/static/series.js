// Asking the API for what a chart can show: raw points for a short range, time
// buckets sized to the chart's pixels for a long one (Grafana's rule), and for a
// counter (energy) the consumption per bucket rather than the register's value.

import * as api from "./api.js";

export const RAW_MAX_SPAN = 3 * 3600 * 1000; // raw points up to 3 hours
const LADDER = [
  ["30s", 30], ["1m", 60], ["2m", 120], ["5m", 300], ["10m", 600], ["15m", 900], ["30m", 1800],
  ["1h", 3600], ["2h", 7200], ["3h", 10800], ["6h", 21600], ["12h", 43200], ["1d", 86400],
];

// The narrowest bucket that gives at most one bucket per `pxPerBucket` pixels.
export function bucketFor(spanMs, widthPx, pxPerBucket = 3) {
  const most = Math.max(10, Math.floor(widthPx / pxPerBucket));
  for (const [name, s] of LADDER) if (spanMs / (s * 1000) <= most) return { name, ms: s * 1000 };
  return { name: "1d", ms: 86400000 };
}

// -> {points: [[ms, v]], band: [[ms, min, max]] | null, bucket: name | null, step}
export async function fetchSeries(deviceId, metric, kind, start, end, widthPx) {
  const span = end - start;
  const path = `devices/${encodeURIComponent(deviceId)}/telemetry`;
  const iso = (ms) => new Date(ms).toISOString();
  if (kind === "counter") {
    const b = bucketFor(span, widthPx, 6);
    // One bucket before the range: the first bucket's consumption needs its predecessor.
    const data = await api.get(path, { metric, start: iso(start - b.ms), end: iso(end), bucket: b.name, limit: 10000 });
    const points = [];
    let prev = null;
    for (const x of data.buckets) {
      const ms = Date.parse(x.bucket);
      // A drop is a meter reset or replacement: that bucket's use is unknown, not negative.
      if (prev !== null && ms >= start) points.push([ms, x.last >= prev ? x.last - prev : 0]);
      prev = x.last;
    }
    return { points, band: null, bucket: b.name, step: true };
  }
  if (span <= RAW_MAX_SPAN) {
    const data = await api.get(path, { metric, start: iso(start), end: iso(end), limit: 10000 });
    if (!data.next) {
      return { points: data.points.map((p) => [Date.parse(p.ts), Number(p.value)]), band: null, bucket: null, step: kind === "state" };
    }
    // Too many raw points for the width: fall through to buckets.
  }
  const b = bucketFor(span, widthPx);
  const data = await api.get(path, { metric, start: iso(start), end: iso(end), bucket: b.name, limit: 10000 });
  return {
    points: data.buckets.map((x) => [Date.parse(x.bucket) + b.ms / 2, x.avg]),
    band: data.buckets.map((x) => [Date.parse(x.bucket) + b.ms / 2, x.min, x.max]),
    bucket: b.name,
    step: false,
  };
}

// Named ranges for the picker; "custom" takes two inputs.
export const RANGES = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
