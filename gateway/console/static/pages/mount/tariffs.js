// 计费: tariff versions. One version shows its time-of-use periods (尖/峰/平/谷) as a
// 24-hour strip per season, its prices and validity; managers add a version (based
// on an existing one, whose rents it keeps) and see the API's objections by the field.

import * as api from "../../api.js";
import { h, replace, table, toast } from "../../dom.js";
import { fmtDateTime, fmtMoney, fmtNumber, t, term } from "../../i18n.js";
import { crumbs, errorBox, field, page, showFieldErrors, siteZone, zonedIso, zonedLocal } from "./common.js";

export const PERIODS = ["sharp", "peak", "flat", "valley"];

// The period of each hour 0..23 of a season (hours no range names take the default).
export function hourPeriods(season, defaultPeriod) {
  const hours = Array(24).fill(defaultPeriod);
  for (const r of (season && season.ranges) || []) {
    for (let hr = Math.max(0, r.start); hr < Math.min(24, r.end); hr++) hours[hr] = r.period;
  }
  return hours;
}

// Consecutive hours of one period: "08:00–11:00 Peak".
function spans(hours) {
  const out = [];
  let start = 0;
  for (let hr = 1; hr <= 24; hr++) {
    if (hr === 24 || hours[hr] !== hours[start]) {
      out.push({ period: hours[start], start, end: hr });
      start = hr;
    }
  }
  return out;
}

const hh = (n) => `${String(n).padStart(2, "0")}:00`;

export function touStrip(hours, label) {
  const summary = spans(hours).map((s) => `${hh(s.start)}–${hh(s.end)} ${term("mount.period", s.period)}`).join(", ");
  return h("figure", { class: "tou" },
    h("figcaption", {}, label),
    h("div", { class: "tou-strip", role: "img", "aria-label": `${label}: ${summary}` },
      hours.map((p, i) => h("span", { class: `tou-hour period-${p}`, dataset: { hour: i, period: p }, title: `${hh(i)}–${hh(i + 1)} ${term("mount.period", p)}` },
        t(`mount.period_short.${p}`)))),
    h("div", { class: "tou-ticks", "aria-hidden": "true" }, [0, 6, 12, 18, 24].map((n) => h("span", {}, String(n)))),
    h("p", { class: "muted tou-summary" }, summary));
}

function legend() {
  return h("ul", { class: "tou-legend" }, PERIODS.map((p) => h("li", {},
    h("span", { class: `tou-hour period-${p}`, "aria-hidden": "true" }, t(`mount.period_short.${p}`)), " ", term("mount.period", p))));
}

// A strip per season, and one for the months no season names (all default period).
function strips(def) {
  const energy = def.energy;
  const named = new Set(energy.seasons.flatMap((s) => s.months));
  const out = energy.seasons.map((s) => touStrip(hourPeriods(s, energy.default_period), t("mount.tariff.season", { months: s.months.join(", ") })));
  const rest = Array.from({ length: 12 }, (_, i) => i + 1).filter((m) => !named.has(m));
  if (rest.length) out.push(touStrip(hourPeriods(null, energy.default_period), t("mount.tariff.season", { months: rest.join(", ") })));
  return out;
}

export const list = {
  render(main, ctx) {
    const box = h("div", { id: "mount-tariffs" }, h("p", { class: "muted" }, t("app.loading")));
    page(main, t("mount.nav.tariffs"), h("h1", {}, t("mount.nav.tariffs")),
      ctx.manager ? h("p", {}, h("a", { href: "#/mount/tariffs/new", class: "button primary" }, t("mount.tariff.new"))) : null, box);
    (async () => {
      try {
        const items = await api.all("tariffs");
        items.sort((a, b) => a.name.localeCompare(b.name) || b.version - a.version);
        replace(box, table(t("mount.nav.tariffs"),
          [t("mount.tariff.name"), t("mount.tariff.version"), t("mount.tariff.valid_from"), t("mount.tariff.valid_to"), t("mount.tariff.prices")],
          items.map((x) => [x.name,
            h("a", { href: `#/mount/tariffs/${x.id}` }, t("mount.tariff.version_n", { n: x.version })),
            fmtDateTime(x.valid_from), x.valid_to ? fmtDateTime(x.valid_to) : t("mount.tariff.open_ended"),
            PERIODS.filter((p) => x.definition.energy.prices[p] !== undefined).map((p) => `${term("mount.period", p)} ${fmtNumber(Number(x.definition.energy.prices[p]), 4)}`).join(" · ")]),
          { empty: t("mount.tariff.none") }));
      } catch (err) {
        errorBox(box, err);
      }
    })();
    return null;
  },
};

function moneyMap(m) {
  const entries = Object.entries(m || {});
  return entries.length ? entries.map(([k, v]) => `${k}: ${fmtMoney(v)}`).join(" · ") : "—";
}

export const one = {
  render(main, ctx, id) {
    const box = h("div", { id: "mount-tariff" }, h("p", { class: "muted" }, t("app.loading")));
    page(main, t("mount.nav.tariffs"), crumbs([t("mount.nav.tariffs"), "#/mount/tariffs"], `#${id}`), box);
    (async () => {
      try {
        const x = await api.get(`tariffs/${id}`);
        const d = x.definition;
        const credits = d.rent.credits || { emergencies: {}, outages: {} };
        replace(box,
          h("h1", {}, `${x.name} · ${t("mount.tariff.version_n", { n: x.version })}`),
          h("dl", { class: "record" },
            h("dt", {}, t("mount.tariff.valid_from")), h("dd", {}, fmtDateTime(x.valid_from)),
            h("dt", {}, t("mount.tariff.valid_to")), h("dd", {}, x.valid_to ? fmtDateTime(x.valid_to) : t("mount.tariff.open_ended")),
            h("dt", {}, t("mount.tariff.estimate_gaps")), h("dd", {}, x.estimate_gaps ? t("mount.yes") : t("mount.no"))),
          h("h2", {}, t("mount.tariff.tou")), legend(), h("div", { id: "mount-tou" }, strips(d)),
          h("h2", {}, t("mount.tariff.prices")),
          table(t("mount.tariff.prices"), [t("mount.tariff.period"), t("mount.tariff.price_kwh")],
            PERIODS.filter((p) => d.energy.prices[p] !== undefined).map((p) => [term("mount.period", p), `${fmtNumber(Number(d.energy.prices[p]), 4)} /kWh`])),
          h("dl", { class: "record" },
            h("dt", {}, t("mount.tariff.default_period")), h("dd", {}, term("mount.period", d.energy.default_period)),
            h("dt", {}, t("mount.tariff.maintenance_fee")), h("dd", {}, fmtMoney(d.maintenance_fee)),
            h("dt", {}, t("mount.tariff.rent_positions")), h("dd", {}, moneyMap(d.rent.positions)),
            h("dt", {}, t("mount.tariff.rent_slot_types")), h("dd", {}, moneyMap(d.rent.slot_types)),
            h("dt", {}, t("mount.tariff.rent_compartment")), h("dd", {}, fmtMoney(d.rent.compartment)),
            h("dt", {}, t("mount.tariff.credits")), h("dd", {},
              Object.entries({ ...credits.emergencies, ...credits.outages }).map(([k, v]) => `${k} × ${fmtNumber(Number(v))}`).join(" · ") || "—")),
          ctx.manager ? h("p", {}, h("a", { href: `#/mount/tariffs/new?from=${x.id}`, class: "button" }, t("mount.tariff.new_from"))) : null);
      } catch (err) {
        errorBox(box, err);
      }
    })();
    return null;
  },
};

function numberInput(value, loc, attrs = {}) {
  return h("input", { type: "number", step: "any", min: 0, value: value ?? "", dataset: { loc }, ...attrs });
}

export const create = {
  render(main, ctx) {
    const tz = siteZone(ctx);
    const box = h("div", { id: "mount-tariff-new" }, h("p", { class: "muted" }, t("app.loading")));
    page(main, t("mount.tariff.new"), crumbs([t("mount.nav.tariffs"), "#/mount/tariffs"], t("mount.tariff.new")), box);
    (async () => {
      let base = null;
      const from = ctx.query.get("from");
      try {
        if (from) base = await api.get(`tariffs/${from}`);
      } catch (err) {
        errorBox(box, err);
        return;
      }
      const def = base ? base.definition : { energy: { prices: {}, default_period: "flat", seasons: [] }, rent: {}, maintenance_fee: "0" };
      const seasons = def.energy.seasons.map((s) => ({ months: s.months.join(", "), ranges: s.ranges.map((r) => ({ ...r })) }));
      const name = h("input", { type: "text", required: true, maxlength: 100, value: base ? base.name : "", autocomplete: "off" });
      const validFrom = h("input", { type: "datetime-local", required: true, value: base && base.valid_to ? zonedLocal(base.valid_to, tz) : "" });
      const validTo = h("input", { type: "datetime-local" });
      const gaps = h("input", { type: "checkbox", checked: base ? base.estimate_gaps : false });
      const prices = Object.fromEntries(PERIODS.map((p) => [p, numberInput(def.energy.prices[p], `definition.energy.prices.${p}`, { step: "0.0001" })]));
      const defaultPeriod = h("select", {}, PERIODS.map((p) => h("option", { value: p }, term("mount.period", p))));
      defaultPeriod.value = def.energy.default_period;
      const fee = numberInput(def.maintenance_fee, "definition.maintenance_fee", { step: "0.01" });
      const compartment = numberInput(def.rent.compartment ?? "0", "definition.rent.compartment", { step: "0.01" });
      const seasonBox = h("div", { id: "mount-seasons" });
      const general = h("div");

      function parseMonths(text) {
        return text.split(/[\s,，、]+/).filter(Boolean).map((x) => (/^\d+$/.test(x) ? Number(x) : x));
      }
      function drawSeasons() {
        replace(seasonBox, seasons.map((s, si) => {
          const preview = h("div", { class: "tou-preview" });
          const refresh = () => replace(preview, touStrip(hourPeriods({ ranges: s.ranges.filter((r) => Number.isInteger(r.start) && Number.isInteger(r.end)) }, defaultPeriod.value),
            t("mount.tariff.season", { months: s.months || "—" })));
          const months = h("input", { type: "text", value: s.months, inputmode: "numeric", oninput: (ev) => { s.months = ev.target.value; refresh(); } });
          const rows = s.ranges.map((r, ri) => {
            const loc = `definition.energy.seasons.${si}.ranges.${ri}`;
            const period = h("select", { onchange: (ev) => { r.period = ev.target.value; refresh(); } }, PERIODS.map((p) => h("option", { value: p }, term("mount.period", p))));
            period.value = r.period;
            const start = numberInput(r.start, `${loc}.start`, { step: 1, max: 23, oninput: (ev) => { r.start = ev.target.value === "" ? null : Number(ev.target.value); refresh(); } });
            const end = numberInput(r.end, `${loc}.end`, { step: 1, max: 24, oninput: (ev) => { r.end = ev.target.value === "" ? null : Number(ev.target.value); refresh(); } });
            const rid = `mount-range-${si}-${ri}`;
            return h("fieldset", { class: "mount-range", id: rid, dataset: { loc } },
              h("legend", {}, t("mount.tariff.range_n", { n: ri + 1 })),
              h("span", { class: "field-error", id: `${rid}-err`, role: "alert" }),
              field(t("mount.tariff.period"), period), field(t("mount.tariff.start_hour"), start), field(t("mount.tariff.end_hour"), end),
              h("button", { type: "button", onclick: () => { s.ranges.splice(ri, 1); drawSeasons(); } }, t("mount.tariff.remove_range", { n: ri + 1 })));
          });
          refresh();
          return h("fieldset", { class: "mount-season", dataset: { season: si } },
            h("legend", {}, t("mount.tariff.season_n", { n: si + 1 })),
            field(t("mount.tariff.months"), months, { loc: `definition.energy.seasons.${si}.months`, hint: t("mount.tariff.months_hint") }),
            h("div", { class: "mount-ranges", dataset: { loc: `definition.energy.seasons.${si}` } }, rows),
            h("span", { class: "field-error", id: `mount-season-${si}-err`, role: "alert" }),
            h("button", { type: "button", onclick: () => { s.ranges.push({ period: "peak", start: null, end: null }); drawSeasons(); } }, t("mount.tariff.add_range")),
            " ",
            h("button", { type: "button", onclick: () => { seasons.splice(si, 1); drawSeasons(); } }, t("mount.tariff.remove_season", { n: si + 1 })),
            preview);
        }));
        // A season's own error slot (overlapping hours) is its ranges' container.
        seasons.forEach((_, si) => {
          const holder = seasonBox.querySelector(`[data-season="${si}"] .mount-ranges`);
          holder.id = `mount-season-${si}`;
        });
      }
      defaultPeriod.addEventListener("change", drawSeasons);
      drawSeasons();

      const form = h("form", { class: "mount-form", novalidate: true, onsubmit: async (ev) => {
        ev.preventDefault();
        const priceMap = {};
        for (const p of PERIODS) if (prices[p].value !== "") priceMap[p] = prices[p].value;
        const body = {
          name: name.value.trim(),
          valid_from: validFrom.value ? zonedIso(validFrom.value, tz) : null,
          valid_to: validTo.value ? zonedIso(validTo.value, tz) : null,
          estimate_gaps: gaps.checked,
          definition: {
            energy: {
              prices: priceMap, default_period: defaultPeriod.value,
              seasons: seasons.map((s) => ({ months: parseMonths(s.months), ranges: s.ranges.map((r) => ({ period: r.period, start: r.start, end: r.end })) })),
            },
            rent: { ...def.rent, compartment: compartment.value || "0" },
            maintenance_fee: fee.value || "0",
          },
        };
        try {
          const made = await api.post("tariffs", body);
          toast(t("mount.tariff.created", { name: made.name, n: made.version }));
          ctx.navigate(`#/mount/tariffs/${made.id}`);
        } catch (err) {
          showFieldErrors(form, err, general);
        }
      } },
      h("h1", {}, t("mount.tariff.new")),
      base ? h("p", { class: "muted" }, t("mount.tariff.based_on", { name: base.name, n: base.version })) : null,
      field(t("mount.tariff.name"), name, { loc: "name", hint: t("mount.tariff.name_hint") }),
      field(t("mount.tariff.valid_from_tz", { tz }), validFrom, { loc: "valid_from" }),
      field(t("mount.tariff.valid_to_tz", { tz }), validTo, { loc: "valid_to", hint: t("mount.tariff.valid_to_hint") }),
      h("div", { class: "field" }, h("label", {}, gaps, " ", t("mount.tariff.estimate_gaps"))),
      h("fieldset", { class: "mount-prices", dataset: { loc: "definition.energy.prices" }, id: "mount-prices" },
        h("legend", {}, t("mount.tariff.prices_kwh")),
        PERIODS.map((p) => field(term("mount.period", p), prices[p])),
        h("span", { class: "field-error", id: "mount-prices-err", role: "alert" })),
      field(t("mount.tariff.default_period"), defaultPeriod, { loc: "definition.energy.default_period" }),
      h("h2", {}, t("mount.tariff.tou")), legend(),
      seasonBox,
      h("button", { type: "button", onclick: () => { seasons.push({ months: "", ranges: [{ period: "peak", start: 8, end: 11 }] }); drawSeasons(); } }, t("mount.tariff.add_season")),
      field(t("mount.tariff.maintenance_fee"), fee),
      field(t("mount.tariff.rent_compartment"), compartment),
      general,
      h("p", {}, h("button", { type: "submit", class: "primary" }, t("mount.tariff.save"))));
      replace(box, form);
    })();
    return null;
  },
};
