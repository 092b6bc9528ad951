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

// All the poles' markers as one Leaflet layer of plain elements (buttons named
// by their title), built in one batch: Leaflet's L.marker cost ~0.35 ms each
// (events, z-index, a 3D transform that makes each marker a compositing layer),
// which at 2,000 poles was most of the overview's time to interactive
// (bench/console.py). Markers are positioned with a 2D transform once per view,
// hidden while a zoom animates and placed again when it ends; southern markers
// are later in the DOM so they overlap northern ones, as Leaflet stacks them.
function poleLayer(onOpen) {
  const L = window.L;
  const Layer = L.Layer.extend({
    initialize() {
      this.items = new Map(); // pole id -> { el, glyph, lat, lon, state, label, moved }
    },
    onAdd(map) {
      this.el = L.DomUtil.create("div", "pole-layer leaflet-zoom-hide", this.getPane("markerPane"));
      L.DomEvent.on(this.el, "click", this.open, this);
      L.DomEvent.on(this.el, "keydown", (e) => { if (e.key === "Enter" || e.key === " ") this.open(e); });
      L.DomEvent.disableClickPropagation(this.el);
      this.place();
      this.order();
    },
    onRemove() {
      L.DomUtil.remove(this.el);
      this.el = null;
    },
    getEvents() {
      return { viewreset: this.place, zoomend: this.place };
    },
    open(e) {
      const el = e.target.closest(".pole-marker");
      if (!el) return;
      if (e.type === "keydown") e.preventDefault();
      onOpen(el.dataset.pole);
    },
    // Poles: [{ id, lat, lon, state, label }]. Returns nothing; the DOM follows.
    set(poles) {
      const keep = new Set();
      let added = false;
      for (const p of poles) {
        keep.add(p.id);
        let item = this.items.get(p.id);
        if (!item) {
          const el = document.createElement("div");
          el.className = "pole-marker leaflet-interactive";
          el.dataset.pole = p.id;
          el.tabIndex = 0;
          el.setAttribute("role", "button");
          const glyph = el.appendChild(document.createElement("span"));
          glyph.setAttribute("aria-hidden", "true");
          item = { el, glyph, state: null, label: null };
          this.items.set(p.id, item);
          added = true;
        }
        if (item.lat !== p.lat || item.lon !== p.lon) {
          item.lat = p.lat;
          item.lon = p.lon;
          item.moved = true;
        }
        if (item.state !== p.state) {
          item.el.className = `pole-marker leaflet-interactive state-${p.state}`;
          item.glyph.textContent = GLYPH[p.state];
          item.state = p.state;
        }
        if (item.label !== p.label) {
          item.el.title = p.label;
          item.el.setAttribute("aria-label", p.label);
          item.label = p.label;
        }
      }
      for (const [id, item] of this.items) {
        if (!keep.has(id)) {
          item.el.remove();
          this.items.delete(id);
        }
      }
      if (this._map) {
        this.place(true);
        if (added) this.order();
      }
    },
    // Position the markers (all of them, or only those that moved).
    place(onlyMoved) {
      const map = this._map;
      for (const item of this.items.values()) {
        if (onlyMoved === true && !item.moved) continue;
        const pt = map.latLngToLayerPoint([item.lat, item.lon]);
        item.el.style.transform = `translate(${Math.round(pt.x)}px,${Math.round(pt.y)}px)`;
        item.moved = false;
      }
    },
    // North to south in the DOM, all appended in one go.
    order() {
      const items = [...this.items.values()].sort((a, b) => b.lat - a.lat);
      const frag = document.createDocumentFragment();
      for (const item of items) frag.appendChild(item.el);
      this.el.appendChild(frag);
    },
  });
  return new Layer();
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
    // Roads are a few dozen SVG paths (the markers are a layer of their own): no
    // canvas renderer, whose redraw after the map is removed throws ("clearRect").
    this.map = L.map(el, {
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
    this.poles = poleLayer((id) => this.onOpen && this.onOpen(id)).addTo(this.map);
    this.map.setView([30.66, 104.06], 13);
    this.fitted = false;
  }

  update(poles, { filter = () => true } = {}) {
    const L = window.L;
    const shown = poles.filter((p) => p.lat !== null && p.lon !== null && filter(p));
    this.drawRoads(shown);
    // Fit the view before the markers are placed, and without animation, so
    // that each is placed once.
    if (!this.fitted && shown.length) {
      this.map.fitBounds(L.latLngBounds(shown.map((p) => [p.lat, p.lon])), { padding: [20, 20], animate: false });
      this.fitted = true;
    }
    this.poles.set(shown.map((p) => {
      const state = poleState(p);
      return { id: p.id, lat: p.lat, lon: p.lon, state, label: `${p.id} ${p.name} · ${p.road} · ${t(`polestate.${state}`)}` };
    }));
  }

  // The roads, drawn again only when the poles shown or where they stand changed
  // (a live refresh after an alarm changes states, not roads): each road label
  // measures itself, a forced layout with 2,000 markers on the page.
  drawRoads(shown) {
    const L = window.L;
    const key = shown.map((p) => `${p.road}|${p.lat}|${p.lon}`).join(";");
    if (key === this.roadsKey) return;
    this.roadsKey = key;
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
  }

  refit() {
    this.fitted = false;
  }

  // Each pole's marker element, for pages that mark some (chosen, their own).
  forEachMarker(fn) {
    for (const [id, item] of this.poles.items) fn(id, item.el);
  }

  // Leaving the page: stop any pan or zoom in flight and take the roads off first,
  // so Leaflet's canvas renderer has no redraw pending when the map goes (a redraw
  // after removal throws "reading 'clearRect'").
  destroy() {
    this.map.stop();
    this.roads.clearLayers();
    this.map.remove();
  }
}
