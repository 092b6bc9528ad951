"""Screenshots of the console's main pages in both languages, for the README.

Run it against a running `polegw demo` (it reads the demo's passwords from its
data folder) with Debian's chromium installed:

    .venv/bin/python scripts/screenshots.py --base http://127.0.0.1:8000 \\
        --data-dir .polegw-demo --out docs/screenshots

Chinese text needs a CJK font on the machine (Debian: fonts-noto-cjk).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}

# (file name, hash route, wait for this selector)
OPERATOR_PAGES = [
    ("overview", "#/", "#overview-map .pole-marker"),
    ("map", "#/map", "#site-map .pole-marker"),
    ("pole", "#/poles/P0001", "article[data-device] table"),
    ("device", "#/devices/P0001-meter?range=24h&metrics=port1_power_w,port2_power_w", "canvas"),
    ("alarms", "#/alarms?state=", "#alarm-list"),
    ("work-orders", "#/work-orders", "main h1"),
    ("lease-board", "#/mount/leases", "main h1"),
    ("bill-run", "#/mount/bills", "main h1"),
    ("archive", "#/archive", "main h1"),
]
TENANT_PAGES = [
    ("tenant-apply", "#/portal/apply", "#apply-map .pole-marker"),
    ("tenant-usage", "#/portal/usage", "main h1"),
    ("tenant-bills", "#/bills", "#bill-list"),
]


def log_in(page: Page, base: str, user: str, password: str) -> None:
    page.goto(f"{base}/console/")
    page.fill("#login-user", user)
    page.fill("#login-pass", password)
    page.click("form.login-form button[type=submit]")
    page.wait_for_selector("#topbar:not([hidden])")


def shoot(page: Page, base: str, route: str, wait: str, path: Path) -> None:
    page.goto(f"{base}/console/{route}")
    page.wait_for_selector(wait, timeout=15000)
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(800)
    page.screenshot(path=str(path), full_page=False)
    print(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="http://127.0.0.1:8000")
    ap.add_argument("--data-dir", type=Path, default=Path(".polegw-demo"))
    ap.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    try:
        admin = (args.data_dir / "admin-password").read_text().strip()
        telecom = (args.data_dir / "telecom-password").read_text().strip()
    except OSError as exc:
        print(f"screenshots: {exc.filename}: {exc.strerror} (is --data-dir the demo's?)")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=FLAGS)
        for lang in ("zh-CN", "en"):
            ctx = browser.new_context(viewport=DESKTOP, locale=lang)  # type: ignore[arg-type]
            page = ctx.new_page()
            log_in(page, args.base, "admin", admin)
            for name, route, wait in OPERATOR_PAGES:
                shoot(page, args.base, route, wait, args.out / f"{name}-{lang}.png")
            ctx.close()
            phone = browser.new_context(viewport=PHONE, locale=lang)  # type: ignore[arg-type]
            page = phone.new_page()
            log_in(page, args.base, "admin", admin)
            phone_shot = args.out / f"phone-{lang}.png"
            shoot(page, args.base, "#/", "#overview-map .pole-marker", phone_shot)
            phone.close()
            tenant = browser.new_context(viewport=DESKTOP, locale=lang)  # type: ignore[arg-type]
            page = tenant.new_page()
            log_in(page, args.base, "telecom", telecom)
            for name, route, wait in TENANT_PAGES:
                shoot(page, args.base, route, wait, args.out / f"{name}-{lang}.png")
            tenant.close()
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
