// The site on a map: every pole at its coordinates, marked by its worst state
// with a shape and a letter as well as a colour, and each road drawn through its
// poles. With no tile server (the default: no internet is needed) the map is a
// plain Web Mercator background; POLEGW_MAP_TILE_URL adds the operator's tiles.

import { h } from "./dom.js";
import { t } from "./i18n.js";

export const STATES = ["critical", "warning", "offline", "ok", "out_of_service"];
const GLYPH = { critical: "!", warning: "▲", offline: "×", ok: "✓", out_of_service: "–" };

// The worst state of a pole from GET /overview/poles.
export function poleState(p) {
  if (p.status && p.status !== "in_service") return "out_of_service";
  if (p.worst_alarm === "critical") return "critical";
  if (p.worst_alarm) return "warning";
  if (p.devices_offline > 0) return "offline";
  return "ok";
}

export function stateBadge(state) {
  return h("span", { class: `badge state-${state}` },
    h("span", { class: "glyph", "aria-hidden": "true" }, GLYPH[state]), " ", t(`polestate.${state}`));
}

export function legend() {
  return h("ul", { class: "legend", "aria-label": t("map.legend") },
    STATES.map((s) => h("li", {}, stateBadge(s))));
}

function icon(state, selected) {
  return window.L.divIcon({
    className: `pole-marker state-${state}${selected ? " selected" : ""}`,
    html: `<span aria-hidden="true">${GLYPH[state]}</span>`,
    iconSize: [18, 18],
    iconAnchor: [9, 9],
  });
}

// Order a road's poles along its main direction, so the line runs pole to pole.
function alongRoad(points) {
  if (points.length < 3) return points;
  const mx = points.reduce((s, p) => s + p[1], 0) / points.length;
  const my = points.reduce((s, p) => s + p[0], 0) / points.length;
  let sxx = 0, sxy = 0, syy = 0;
  for (const [y, x] of points) {
    sxx += (x - mx) ** 2; syy += (y - my) ** 2; sxy += (x - mx) * (y - my);
  }
  const angle = 0.5 * Math.atan2(2 * sxy, sxx - syy);
  const [c, s] = [Math.cos(angle), Math.sin(angle)];
  return [...points].sort((a, b) => (a[1] * c + a[0] * s) - (b[1] * c + b[0] * s));
}

export class SiteMap {
  constructor(el, config, { onOpen } = {}) {
    const L = window.L;
    this.onOpen = onOpen;
    this.markers = new Map();
    this.map = L.map(el, {
      preferCanvas: true,
      zoomSnap: 0.25,
      attributionControl: Boolean(config.map_tile_url),
      keyboard: true,
    });
    if (config.map_tile_url) {
      L.tileLayer(config.map_tile_url, { maxZoom: 20, attribution: config.map_tile_attribution || "" }).addTo(this.map);
    } else {
      el.classList.add("plain-map");
    }
    this.roads = L.layerGroup().addTo(this.map);
    this.poles = L.layerGroup().addTo(this.map);
    this.map.setView([30.66, 104.06], 13);
    this.fitted = false;
  }

  update(poles, { filter = () => true } = {}) {
    const L = window.L;
    const shown = poles.filter((p) => p.lat !== null && p.lon !== null && filter(p));
    this.roads.clearLayers();
    const byRoad = new Map();
    for (const p of shown) {
      if (!byRoad.has(p.road)) byRoad.set(p.road, []);
      byRoad.get(p.road).push([p.lat, p.lon]);
    }
    for (const [road, pts] of byRoad) {
      if (pts.length < 2) continue;
      const line = L.polyline(alongRoad(pts), { color: "#aeb7c0", opacity: 0.9, interactive: false, weight: 6 });
      line.addTo(this.roads);
      line.bindTooltip(road, { permanent: true, direction: "center", className: "road-label" });
    }
    const keep = new Set();
    for (const p of shown) {
      keep.add(p.id);
      const state = poleState(p);
      const label = `${p.id} ${p.name} · ${p.road} · ${t(`polestate.${state}`)}`;
      let m = this.markers.get(p.id);
      if (!m) {
        m = L.marker([p.lat, p.lon], { icon: icon(state), title: label, alt: label, keyboard: true, riseOnHover: true });
        m.on("click", () => this.onOpen && this.onOpen(p.id));
        m.on("keypress", (e) => { if (e.originalEvent.key === "Enter") this.onOpen && this.onOpen(p.id); });
        m.addTo(this.poles);
        m._polegwState = state;
        this.markers.set(p.id, m);
      } else if (m._polegwState !== state) {
        m.setIcon(icon(state));
        m._polegwState = state;
      }
      m.options.title = label;
      if (m._icon) {
        m._icon.title = label;
        m._icon.setAttribute("aria-label", label);
      }
    }
    for (const [id, m] of this.markers) {
      if (!keep.has(id)) {
        m.remove();
        this.markers.delete(id);
      }
    }
    if (!this.fitted && shown.length) {
      // Not animated: a page left during the zoom animation would leave Leaflet
      // (1.9) stepping a removed map ("_leaflet_pos" of undefined).
      this.map.fitBounds(L.latLngBounds(shown.map((p) => [p.lat, p.lon])), { padding: [20, 20], animate: false });
      this.fitted = true;
    }
  }

  refit() {
    this.fitted = false;
  }

  destroy() {
    // Layers first, while the canvas renderer is still there to take their redraws.
    this.map.stop();
    this.roads.clearLayers();
    this.poles.clearLayers();
    this.map.remove();
  }
}
