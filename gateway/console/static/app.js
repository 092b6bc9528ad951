// The console's shell: who is logged in, the menu their role may use, the
// language, the live connection, and the page for the address after "#".

import * as api from "./api.js";
import { h, replace, toast } from "./dom.js";
import { LANGS, language, pickLanguage, setLanguage, setTimeZone, t } from "./i18n.js";
import * as live from "./live.js";
import * as admin from "./pages/admin/admin.js";
import * as archive from "./pages/admin/archive.js";
import * as alarms from "./pages/alarms.js";
import * as device from "./pages/device.js";
import * as login from "./pages/login.js";
import * as overview from "./pages/overview.js";
import * as pole from "./pages/pole.js";
import * as sitemap from "./pages/map.js";
import * as tenant from "./pages/tenant.js";
import * as portalApply from "./pages/portal/apply.js";
import * as portalApps from "./pages/portal/applications.js";
import * as portalBills from "./pages/portal/bills.js";
import * as portalLeases from "./pages/portal/leases.js";
import * as portalUsage from "./pages/portal/usage.js";
import * as mountApps from "./pages/mount/applications.js";
import * as mountBills from "./pages/mount/bills.js";
import * as mountLeases from "./pages/mount/leases.js";
import * as mountTariffs from "./pages/mount/tariffs.js";
import * as emergencies from "./pages/ops/emergencies.js";
import * as emergency from "./pages/ops/emergency.js";
import * as emplans from "./pages/ops/emplans.js";
import * as inspections from "./pages/ops/inspections.js";
import * as lighting from "./pages/ops/lighting.js";
import * as workorder from "./pages/ops/workorder.js";
import * as workorders from "./pages/ops/workorders.js";

const STAFF = new Set(["admin", "operator", "maintainer"]);
// Who may see a page: the roles the API admits to what the page is for.
const WHO = {
  any: () => true,
  staff: (role) => STAFF.has(role),
  managers: (role) => role === "admin" || role === "operator",
  admin: (role) => role === "admin",
  tenant: (role) => role === "tenant",
};

// [pattern, page, who may see it (a key of WHO), menu label key or null, who has it in
// the menu when that differs (a key of WHO)]. A page
// module exports render(main, ctx, ...captures) -> cleanup function or null.
const ROUTES = [
  [/^\/$/, overview, "staff", "nav.overview"],
  [/^\/map$/, sitemap, "staff", "nav.map"],
  [/^\/alarms$/, alarms, "staff", "nav.alarms"],
  [/^\/poles\/([^/]+)$/, pole, "staff", null],
  [/^\/devices\/([^/]+)$/, device, "staff", null],
  [/^\/work-orders$/, workorders, "staff", "ops.nav.work_orders"],
  [/^\/work-orders\/(\d+)$/, workorder, "staff", null],
  [/^\/inspections$/, inspections, "staff", null],
  [/^\/emergencies$/, emergencies, "staff", "ops.nav.emergencies"],
  [/^\/emergencies\/(\d+)$/, emergency, "staff", null],
  [/^\/emergency-plans$/, emplans, "staff", null],
  [/^\/lighting$/, lighting, "staff", "ops.nav.lighting"],
  // Staff reach every lease and bill here too, but their menu has the lease board
  // and the bill runs (挂载服务) instead.
  [/^\/leases$/, tenant.leases, "any", "nav.leases", "tenant"],
  // The tenant portal (挂载服务): apply, follow applications, leases, usage, bills.
  [/^\/portal\/apply$/, portalApply.apply, "tenant", "portal.nav.apply"],
  [/^\/portal\/applications$/, portalApps.list, "tenant", "portal.nav.applications"],
  [/^\/portal\/applications\/(\d+)$/, portalApps.detail, "tenant", null],
  [/^\/portal\/applications\/(\d+)\/answer$/, portalApply.answer, "tenant", null],
  [/^\/portal\/leases\/(\d+)$/, portalLeases.detail, "tenant", null],
  [/^\/portal\/usage$/, portalUsage, "tenant", "portal.nav.usage"],
  [/^\/bills$/, tenant.bills, "any", "nav.bills", "tenant"],
  [/^\/bills\/(\d+)$/, portalBills.detail, "any", null],
  [/^\/archive$/, archive.list, "staff", "admin.nav.archive"],
  [/^\/archive\/poles\/([^/]+)$/, archive.pole, "staff", null],
  [/^\/archive\/devices\/([^/]+)$/, archive.device, "staff", null],
  [/^\/admin\/users$/, admin.users, "admin", "admin.nav.admin"],
  [/^\/admin\/keys$/, admin.keys, "admin", null],
  [/^\/admin\/audit$/, admin.audit, "admin", null],
  [/^\/admin\/exports$/, admin.exports, "admin", null],
  // 挂载服务 for the operator (issue 13): applications, the lease board, tariffs, bill runs.
  [/^\/mount\/applications$/, mountApps.list, "staff", "mount.nav.applications"],
  [/^\/mount\/applications\/(\d+)$/, mountApps.one, "staff", null],
  [/^\/mount\/leases$/, mountLeases.board, "staff", "mount.nav.leases"],
  [/^\/mount\/leases\/(\d+)$/, mountLeases.one, "staff", null],
  [/^\/mount\/tariffs$/, mountTariffs.list, "staff", "mount.nav.tariffs"],
  [/^\/mount\/tariffs\/new$/, mountTariffs.create, "managers", null],
  [/^\/mount\/tariffs\/(\d+)$/, mountTariffs.one, "staff", null],
  [/^\/mount\/bills$/, mountBills.run, "staff", "mount.nav.bills"],
  [/^\/mount\/bills\/(\d+)$/, mountBills.one, "staff", null],
];

const state = { me: null, config: {}, cleanup: null };

function allowed(who) {
  return Boolean(state.me) && WHO[who](state.me.role);
}

function home() {
  return state.me && STAFF.has(state.me.role) ? "#/" : "#/leases";
}

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, qs] = raw.split("?");
  return { path, query: new URLSearchParams(qs || "") };
}

export function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function renderNav() {
  const nav = document.getElementById("nav");
  const { path } = parseHash();
  const links = ROUTES.filter(([, , who, label, menu]) => label && allowed(menu || who)).map(([re, , , label]) => {
    const href = `#${re.source.replace(/^\^\\?|\$$/g, "").replace(/\\\//g, "/") || "/"}`;
    const current = re.test(path);
    return h("a", { href, "aria-current": current ? "page" : null }, t(label));
  });
  replace(nav, links);
  document.getElementById("brand").textContent = t("app.name");
  document.getElementById("logout").textContent = t("app.logout");
  document.getElementById("lang-label").textContent = t("app.language");
  document.getElementById("skip-link").textContent = t("app.skip");
  document.getElementById("menu-toggle").setAttribute("aria-label", t("app.menu"));
  document.getElementById("who").textContent = state.me
    ? `${state.me.name} · ${t(`role.${state.me.role}`)}`
    : "";
  document.getElementById("lang-select").value = language();
}

async function render() {
  if (state.cleanup) {
    try {
      state.cleanup();
    } catch (err) {
      console.error(err);
    }
    state.cleanup = null;
  }
  const main = document.getElementById("main");
  const topbar = document.getElementById("topbar");
  const { path, query } = parseHash();
  document.body.classList.remove("menu-open");
  document.getElementById("menu-toggle").setAttribute("aria-expanded", "false");
  if (!state.me) {
    topbar.hidden = true;
    document.title = `${t("login.title")} · polegw`;
    state.cleanup = login.render(main, { onLogin: loggedIn });
    return;
  }
  topbar.hidden = false;
  renderNav();
  for (const [re, page, who] of ROUTES) {
    const m = re.exec(path);
    if (!m) continue;
    if (!allowed(who)) break; // a page this role may not see does not exist for it
    const role = state.me.role;
    const ctx = {
      me: state.me, config: state.config, query, navigate,
      staff: STAFF.has(role), manager: WHO.managers(role), admin: WHO.admin(role),
    };
    state.cleanup = page.render(main, ctx, ...m.slice(1).map(decodeURIComponent)) || null;
    return;
  }
  document.title = `${t("notfound.title")} · polegw`;
  replace(main, h("section", { class: "page" },
    h("h1", {}, t("notfound.title")),
    h("p", {}, t("notfound.text")),
    h("p", {}, h("a", { href: home() }, t("notfound.home")))));
}

async function loggedIn(me) {
  state.me = me;
  live.connect();
  if (!location.hash || location.hash === "#/login") location.hash = home();
  else render();
}

function loggedOut() {
  if (!state.me) return;
  state.me = null;
  live.disconnect();
  toast(t("login.expired"), "warn");
  render();
}

async function boot() {
  api.setUnauthorizedHandler(loggedOut);
  try {
    state.config = await api.get("/console/config.json");
  } catch {
    state.config = {};
  }
  setTimeZone(state.config.site_timezone);
  await setLanguage(pickLanguage());
  live.onConnectionState((s) => {
    const el = document.getElementById("live");
    el.dataset.state = s;
    el.textContent = s === "off" ? "" : t(`live.${s}`);
  });
  document.getElementById("lang-select").addEventListener("change", async (ev) => {
    const l = ev.target.value;
    if (!LANGS.includes(l)) return;
    await setLanguage(l, { remember: true });
    const el = document.getElementById("live");
    if (el.dataset.state && el.dataset.state !== "off") el.textContent = t(`live.${el.dataset.state}`);
    render();
  });
  document.getElementById("logout").addEventListener("click", async () => {
    try {
      await api.del("auth/session");
    } catch {
      /* the session may be gone already */
    }
    state.me = null;
    live.disconnect();
    location.hash = "#/";
    render();
  });
  document.getElementById("menu-toggle").addEventListener("click", (ev) => {
    const open = document.body.classList.toggle("menu-open");
    ev.currentTarget.setAttribute("aria-expanded", String(open));
  });
  window.addEventListener("hashchange", render);
  try {
    state.me = await api.get("auth/me");
    live.connect();
  } catch (err) {
    if (!(err instanceof api.ApiError) || err.status !== 401) console.error(err);
    state.me = null;
  }
  if (state.me && (!location.hash || location.hash === "#/login")) location.hash = home();
  await render();
}

boot();
