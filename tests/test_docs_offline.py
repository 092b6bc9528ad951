"""/docs and /redoc load nothing from another origin: every script, style and
icon they reference is served by the app itself; / sends a browser to the console."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest

from gateway.config import Settings
from tests.support import api_client

CONTENT_TYPES = {
    "script": "javascript",
    "stylesheet": "text/css",
    "icon": "image/",
}


class References(HTMLParser):
    """Every URL a page loads (script src, link href), with what it is for."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.found.append(("script", str(a["src"])))
        if tag == "link" and a.get("href"):
            rel = str(a.get("rel") or "")
            self.found.append(("stylesheet" if "stylesheet" in rel else "icon", str(a["href"])))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_load_only_same_origin_assets(page: str) -> None:
    async with api_client(Settings(database_url="postgresql://unused/")) as client:
        r = await client.get(page)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        parser = References()
        parser.feed(r.text)
        kinds = {kind for kind, _ in parser.found}
        assert "script" in kinds
        if page == "/docs":
            assert "stylesheet" in kinds
        # No absolute URL anywhere in the page (scripts, styles, fonts, the spec).
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", r.text, re.I), r.text
        base = str(client.base_url).rstrip("/") + page
        for kind, ref in parser.found:
            url = urljoin(base, ref)
            assert urlsplit(url).netloc == client.base_url.host, (kind, ref)
            asset = await client.get(url)
            assert asset.status_code == 200, (kind, ref)
            assert CONTENT_TYPES[kind] in asset.headers["content-type"], (
                kind,
                ref,
                asset.headers["content-type"],
            )
            assert len(asset.content) > 1000, ref
        spec = re.search(r"""(?:url|spec-url)\s*[:=]\s*['"]([^'"]+)['"]""", r.text)
        assert spec is not None
        assert spec.group(1) == "/openapi.json"
        assert (await client.get(spec.group(1))).status_code == 200


async def test_swagger_ui_oauth2_redirect_page_is_served() -> None:
    async with api_client(Settings(database_url="postgresql://unused/")) as client:
        r = await client.get("/docs/oauth2-redirect")
        assert r.status_code == 200
        assert "oauth2" in r.text.lower()


async def test_the_root_redirects_to_the_console() -> None:
    async with api_client(Settings(database_url="postgresql://unused/")) as client:
        r = await client.get("/", follow_redirects=False)
        assert r.status_code == 307
        assert r.headers["location"] == "/console/"
