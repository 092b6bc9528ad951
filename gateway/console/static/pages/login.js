import * as api from "../api.js";
import { h, replace } from "../dom.js";
import { t } from "../i18n.js";

export function render(main, { onLogin }) {
  const error = h("p", { class: "error", role: "alert", id: "login-error" });
  const user = h("input", { id: "login-user", name: "username", autocomplete: "username", required: true, autocapitalize: "none" });
  const pass = h("input", { id: "login-pass", name: "password", type: "password", autocomplete: "current-password", required: true });
  const button = h("button", { type: "submit", class: "primary" }, t("login.submit"));
  const form = h("form", { class: "login-form", "aria-describedby": "login-error" },
    h("h1", {}, t("login.title")),
    h("p", { class: "muted" }, t("login.subtitle")),
    h("label", { for: "login-user" }, t("login.username")), user,
    h("label", { for: "login-pass" }, t("login.password")), pass,
    error, button);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    button.disabled = true;
    try {
      const me = await api.post("auth/session", { username: user.value.trim(), password: pass.value });
      onLogin(me);
    } catch (err) {
      if (err.status === 401) error.textContent = t("login.bad");
      else if (err.status === 429) error.textContent = t("login.throttled");
      else error.textContent = `${t("error.generic")} ${err.message}`;
      pass.select();
    } finally {
      button.disabled = false;
    }
  });
  replace(main, h("section", { class: "login" }, form));
  user.focus();
  return null;
}
