// Catalogues (static/i18n/{area}.{lang}.json, one pair per area of the console)
// and locale-aware formatting.
// Every word a person reads comes from a catalogue through t(); numbers, dates
// and ages are formatted with Intl for the chosen language in the site's time zone.

export const LANGS = ["zh-CN", "en"];
const STORE = "polegw.lang";

let lang = "zh-CN";
let messages = {};
let fallback = {};
let timeZone = "Asia/Shanghai";

export function pickLanguage() {
  const saved = localStorage.getItem(STORE);
  if (LANGS.includes(saved)) return saved;
  for (const l of navigator.languages || [navigator.language]) {
    if (!l) continue;
    if (l.toLowerCase().startsWith("zh")) return "zh-CN";
    if (l.toLowerCase().startsWith("en")) return "en";
  }
  return "zh-CN";
}

// The areas whose catalogues are loaded; an area's pages add their words in its own
// pair of files, so areas are translated (and reviewed) independently.
export const AREAS = ["console", "portal", "admin", "mount", "ops"];

async function load(l) {
  const parts = await Promise.all(AREAS.map(async (area) => {
    const res = await fetch(`/console/static/i18n/${area}.${l}.json`, { credentials: "same-origin" });
    if (!res.ok) throw new Error(`catalogue ${area}.${l}: ${res.status}`);
    return res.json();
  }));
  return Object.assign({}, ...parts);
}

export async function setLanguage(l, { remember = false } = {}) {
  if (!LANGS.includes(l)) l = "zh-CN";
  // Kept at once: a reload while the catalogue is still loading keeps the choice.
  if (remember) localStorage.setItem(STORE, l);
  messages = await load(l);
  if (l !== "en" && Object.keys(fallback).length === 0) fallback = await load("en");
  lang = l;
  document.documentElement.lang = l;
}

export function setTimeZone(tz) {
  if (tz) timeZone = tz;
}

export const language = () => lang;
// English dates read year-month-day (en-CA), never the US month-first order.
const intlLocale = () => (lang === "en" ? "en-CA" : lang);

// t(key, {id: 3}): the message with {name} placeholders filled in.
export function t(key, vars) {
  let s = messages[key];
  if (s === undefined) {
    s = fallback[key] ?? key;
    if (window.__polegwMissing) window.__polegwMissing.add(key);
  }
  if (vars) s = s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));
  return s;
}

export const has = (key) => key in messages;

// A metric's name in words: metric.voltage_v, or "Port 2 " + metric.voltage_v.
export function metricLabel(name) {
  if (has(`metric.${name}`)) return t(`metric.${name}`);
  const m = /^port(\d+)_(.+)$/.exec(name);
  if (m) return `${t("metric.port", { n: m[1] })} ${metricLabel(m[2])}`;
  return name;
}

// A word from a fixed vocabulary (states, severities, roles…), or the code itself.
export function term(group, code) {
  if (code === null || code === undefined) return "—";
  const key = `${group}.${code}`;
  return has(key) ? t(key) : String(code);
}

// Building an Intl formatter costs far more than formatting with it (a list of
// 200 alarms spent ~50 ms on it), so each is made once per locale and options.
const formatters = new Map();
function formatter(Kind, locale, opts) {
  const key = `${Kind.name}|${locale}|${JSON.stringify(opts)}`;
  let f = formatters.get(key);
  if (!f) {
    f = new Kind(locale, opts);
    formatters.set(key, f);
  }
  return f;
}

export function fmtNumber(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "—";
  const opts = digits === undefined ? { maximumFractionDigits: 3 } : { minimumFractionDigits: digits, maximumFractionDigits: digits };
  return formatter(Intl.NumberFormat, lang, opts).format(v);
}

export function fmtDateTime(v, { seconds = false } = {}) {
  if (!v) return "—";
  const d = v instanceof Date ? v : new Date(v);
  return formatter(Intl.DateTimeFormat, intlLocale(), {
    timeZone,
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", ...(seconds ? { second: "2-digit" } : {}),
    hour12: false,
  }).format(d);
}

export function fmtDate(v) {
  if (!v) return "—";
  const d = typeof v === "string" && /^\d{4}-\d{2}-\d{2}$/.test(v) ? new Date(`${v}T00:00:00Z`) : new Date(v);
  return new Intl.DateTimeFormat(intlLocale(), { timeZone: typeof v === "string" && v.length === 10 ? "UTC" : timeZone, year: "numeric", month: "2-digit", day: "2-digit" }).format(d);
}

export function fmtTime(d, withDate) {
  return new Intl.DateTimeFormat(intlLocale(), {
    timeZone, hour: "2-digit", minute: "2-digit", hour12: false,
    ...(withDate ? { month: "2-digit", day: "2-digit" } : {}),
  }).format(d);
}

// "3 min ago": how old a value is.
export function fmtAge(v, now = Date.now()) {
  if (!v) return "—";
  const s = Math.round((now - new Date(v).getTime()) / 1000);
  const rtf = formatter(Intl.RelativeTimeFormat, lang, { numeric: "auto", style: "short" });
  if (Math.abs(s) < 60) return rtf.format(-s, "second");
  if (Math.abs(s) < 3600) return rtf.format(-Math.round(s / 60), "minute");
  if (Math.abs(s) < 86400) return rtf.format(-Math.round(s / 3600), "hour");
  return rtf.format(-Math.round(s / 86400), "day");
}

export function fmtMoney(amount, currency = "CNY") {
  if (amount === null || amount === undefined) return "—";
  return new Intl.NumberFormat(lang, { style: "currency", currency }).format(Number(amount));
}
