// 地图: every pole, filtered by road and by state, with a list beside the map
// that says the same in words (and works with a keyboard and a screen reader).

import * as api from "../api.js";
import { h, replace, throttle } from "../dom.js";
import { t } from "../i18n.js";
import * as live from "../live.js";
import { STATES, SiteMap, legend, poleState, stateBadge } from "../sitemap.js";

export function render(main, ctx) {
  document.title = `${t("nav.map")} · polegw`;
  const road = h("select", { id: "map-road" }, h("option", { value: "" }, t("map.all_roads")));
  const state = h("select", { id: "map-state" }, h("option", { value: "" }, t("map.all_states")),
    STATES.map((s) => h("option", { value: s }, t(`polestate.${s}`))));
  road.value = ctx.query.get("road") || "";
  state.value = ctx.query.get("state") || "";
  const mapEl = h("div", { class: "map map-large", id: "site-map", role: "region", "aria-label": t("map.title") });
  const listEl = h("div", { class: "pole-list", id: "pole-list" });
  const count = h("p", { class: "muted", "aria-live": "polite" });
  replace(main, h("section", { class: "page" },
    h("h1", {}, t("nav.map")),
    h("div", { class: "filters" },
      h("label", { for: "map-road" }, t("map.road")), road,
      h("label", { for: "map-state" }, t("map.state")), state),
    count,
    mapEl, legend(),
    h("h2", {}, t("map.list")), listEl));
  const map = new SiteMap(mapEl, ctx.config, { onOpen: (id) => ctx.navigate(`#/poles/${encodeURIComponent(id)}`) });
  let poles = [];
  let roadsKnown = false;

  function draw() {
    const filter = (p) => (!road.value || p.road === road.value) && (!state.value || poleState(p) === state.value);
    map.update(poles, { filter });
    const shown = poles.filter(filter);
    count.textContent = t("map.count", { n: shown.length, total: poles.length });
    replace(listEl, h("ul", { class: "list" }, shown.slice(0, 500).map((p) => h("li", {},
      h("a", { href: `#/poles/${encodeURIComponent(p.id)}` }, `${p.id} ${p.name}`), " ",
      h("span", { class: "muted" }, p.road), " ", stateBadge(poleState(p))))));
  }

  async function refresh() {
    const data = await api.get("overview/poles");
    poles = data.poles;
    if (!roadsKnown) {
      for (const r of data.roads) road.append(h("option", { value: r }, r));
      road.value = ctx.query.get("road") || "";
      roadsKnown = true;
    }
    draw();
  }
  function filtersChanged() {
    map.refit();
    const q = new URLSearchParams();
    if (road.value) q.set("road", road.value);
    if (state.value) q.set("state", state.value);
    history.replaceState(null, "", `#/map${q.toString() ? `?${q}` : ""}`);
    draw();
  }
  road.addEventListener("change", filtersChanged);
  state.addEventListener("change", filtersChanged);
  const soon = throttle(refresh, 2000);
  const unsubs = ["alarm", "device"].map((k) => live.subscribe(k, soon));
  refresh();
  return () => {
    unsubs.forEach((u) => u());
    map.destroy();
  };
}
