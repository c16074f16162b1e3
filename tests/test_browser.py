"""The leaderboard in a real headless Chromium (Playwright), served over HTTP and opened from disk:
sorting, the target-kind filter, a submission page's images, a hostile name shown as text.

Skipped when /usr/bin/chromium ($UNLEARN_CHROMIUM) or the playwright package is missing, unless
UNLEARN_REQUIRE_BROWSER=1 (CI), where that is a failure.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from harness import site as lb

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "leaderboard" / "results"
CHROMIUM = Path(os.environ.get("UNLEARN_CHROMIUM", "/usr/bin/chromium"))  # GitHub runners: their google-chrome
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
XSS = "<script>alert(1)</script>"


def _require_browser():
    missing = []
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} is missing")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package is missing (pip install -e '.[dev]')")
    if not COMMITTED.is_dir() or not list(COMMITTED.glob("*.json")):
        missing.append("leaderboard/results has no results (unlearn leaderboard refresh)")
    if missing:
        if os.environ.get("UNLEARN_REQUIRE_BROWSER") == "1":
            pytest.fail("browser test required (UNLEARN_REQUIRE_BROWSER=1) but " + "; ".join(missing))
        pytest.skip("; ".join(missing))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site of the committed results plus a copy of one of them under a hostile name."""
    _require_browser()
    tmp = tmp_path_factory.mktemp("browser")
    res = tmp / "results"
    shutil.copytree(COMMITTED, res)
    data = json.loads(sorted(res.glob("*.json"))[-1].read_text())
    data["submission"]["name"] = XSS
    data["submission"]["method"]["paper_url"] = "javascript:alert(2)"
    (res / "xss.json").write_text(json.dumps(data))
    # a method-seed spread beside the results, as `unlearn regress --method-seeds 3` writes it
    from harness.gate.regression import method_spread

    first = json.loads((res / "toy-esd-style.json").read_text())  # ESD-x: a stochastic method
    runs = [first, *({**first, "metrics": [{**m, "value": m["value"] + d} if isinstance(m.get("value"), float) else m for m in first["metrics"]]}
                     for d in (0.01, -0.01))]
    spread = {"submission": first["submission"]["name"], "seeds": [0, 1, 2], "spread": method_spread(runs)}
    (res / f"{first['submission']['name']}.method-seeds.json").write_text(json.dumps(spread))
    from harness.results.attest import write_manifest

    write_manifest(res, "test_browser")  # the copied folder's manifest now lists the hostile file too
    out = tmp / "site"
    lines: list[str] = []
    lb.build(res, out, report=lines.append)
    assert lines == []
    return out


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def _column(page, table: str, col: int | None) -> list[str]:
    """The data-sort of one column of the visible rows; ``None``: the first metric value column
    (after the name, method, target, checks and, where the suite has a headline metric, rank)."""
    pick = "r.querySelector('td.value')" if col is None else f"r.cells[{col}]"
    return page.eval_on_selector_all(f"{table} tbody.rows tr:not([hidden])", f"rows => rows.map(r => {pick}.getAttribute('data-sort'))")


@pytest.mark.parametrize("where", ["http", "file"])
def test_site_in_chromium(browser, site, server, where, tmp_path):
    base = server if where == "http" else site.as_uri() + "/"
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(20_000)
    dialogs, errors = [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(base + "index.html")
    page.wait_for_load_state("load")
    assert page.title().startswith("Leaderboard")

    # sorting: UA's value column (the first metric column), descending first
    table = "#table-toy-canvas"
    before = page.eval_on_selector_all(f"{table} tbody.rows tr", "rows => rows.map(r => r.dataset.submission + '/' + r.cells[2].dataset.sort)")
    ua = page.locator(f"{table} thead tr.sub-head th").first
    ua.locator("button").click()
    assert ua.get_attribute("aria-sort") == "descending"
    assert ua.locator(".arrow").inner_text().strip() == "▼"
    values = [float(v) for v in _column(page, table, None)]
    assert values == sorted(values, reverse=True) and len(set(values)) > 1
    after = page.eval_on_selector_all(f"{table} tbody.rows tr", "rows => rows.map(r => r.dataset.submission + '/' + r.cells[2].dataset.sort)")
    assert after != before and sorted(after) == sorted(before)
    ua.locator("button").click()
    assert ua.get_attribute("aria-sort") == "ascending" and ua.locator(".arrow").inner_text().strip() == "▲"
    values = [float(v) for v in _column(page, table, None)]
    assert values == sorted(values)
    name_th = page.locator(f"{table} thead th").first
    assert name_th.get_attribute("aria-sort") == "none"

    # the kind filter
    total = page.locator(f"{table} tbody.rows tr").count()
    page.locator("button.kind-filter[data-kind='object']").click()
    kinds = page.eval_on_selector_all(f"{table} tbody tr:not([hidden])", "rows => rows.map(r => r.dataset.kind)")
    assert kinds and set(kinds) == {"object"} and len(kinds) < total
    assert page.locator("button.kind-filter[data-kind='object']").get_attribute("aria-pressed") == "true"
    for fig in ("svg.tradeoff", "svg.asr-curve"):  # the figures dim the other kinds' points and lines
        shown = page.eval_on_selector_all(f"{fig} [data-kind]", "els => els.map(e => [e.getAttribute('data-kind'), e.classList.contains('dimmed')])")
        assert shown and all(dim == ("object" not in k.split()) for k, dim in shown), (fig, shown)
    page.locator("button.kind-filter[data-kind='all']").click()
    assert page.locator(f"{table} tbody.rows tr:not([hidden])").count() == total
    assert page.locator("svg .dimmed").count() == 0

    # the method-seed spread: after the value, with its legend
    seeds = page.locator(f"{table} .seeds").first
    assert seeds.is_visible() and seeds.inner_text().endswith("(3 seeds)") and "training seeds" in seeds.get_attribute("title")
    assert page.locator(".seeds-legend").is_visible()

    # the hostile name is text, and ran nothing
    link = page.locator(f"{table} a.sub", has_text=XSS).first
    assert link.inner_text() == XSS
    assert page.locator("script").count() == 1  # leaderboard.js only
    page.screenshot(path=str(tmp_path / "index.png"), full_page=True)

    # a submission page: its sample images load
    page.locator(f"{table} a.sub", has_text="toy-uce-style").first.click()
    page.wait_for_load_state("load")
    assert page.locator("h1").inner_text() == "toy-uce-style"
    n = page.locator("img").count()
    assert n >= 2
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
    assert all(w > 0 for w in widths), widths
    page.screenshot(path=str(tmp_path / "submission.png"), full_page=True)

    page.goto(base + f"submissions/{lb.slug(XSS)}.html")
    page.wait_for_load_state("load")
    assert page.locator("h1").inner_text() == XSS
    assert page.locator("a[href^='javascript:']").count() == 0
    assert page.get_by_text("javascript:alert(2)").count() == 1

    assert dialogs == [] and errors == []
    for shot in ("index.png", "submission.png"):
        data = (tmp_path / shot).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    page.close()
