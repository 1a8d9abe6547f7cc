"""Drive the dashboard with headless chromium from inside the router namespace (where imqd's API listens).

Run by tests/integration/test_dashboard.py as ``ip netns exec ROUTER python dashboard_browse.py URL CLASS
RATE NEW_RATE SCREENSHOT``; prints one JSON object with what it saw, which the test asserts on.  Steps:
load the page, wait until CLASS's live rate is within 10 % of RATE (bit/s), save a screenshot, change the
class's rate to NEW_RATE on the page, then provoke a 422 (ceil below rate) and read the message next to the
field.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

CHROMIUM = "/usr/bin/chromium"
UNITS = {"bit/s": 1, "kbit/s": 1e3, "Mbit/s": 1e6, "Gbit/s": 1e9}


def parse_rate(text: str | None) -> float | None:
    m = re.fullmatch(r"([\d.]+) (\w+/s)", (text or "").strip())
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def main(url: str, name: str, rate: float, new_rate: str, shot: str) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {"console": [], "rates": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 980})
        page.on("console", lambda m: out["console"].append(f"{m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: out["console"].append(f"pageerror: {e}"))
        t0 = time.monotonic()
        page.goto(url)
        row = f'#rows .row[data-name="{name}"]'
        page.wait_for_selector(row)
        out["rows"] = page.eval_on_selector_all("#rows .row", "rows => rows.map(r => r.dataset.name)")
        out["console_at_load"] = list(out["console"])
        converged = None
        while time.monotonic() - t0 < 15:
            measured = parse_rate(page.text_content(f'{row} [data-k="now"]'))
            out["rates"].append([round(time.monotonic() - t0, 2), measured])
            if measured is not None and abs(measured - rate) <= 0.1 * rate and converged is None:
                converged = time.monotonic() - t0
            if converged is not None and time.monotonic() - t0 > max(converged, 0) + 3:
                break  # a few more seconds of chart for the screenshot
            time.sleep(0.1)
        out["converged_after"] = converged
        page.click(row)  # the detail panel and the editor, in the picture too
        page.wait_for_timeout(600)
        page.screenshot(path=shot, full_page=True)
        page.fill('#class-form [name="rate"]', new_rate)
        page.click("#save")
        page.wait_for_function("document.querySelector('#editor-title').textContent.startsWith('saved')")
        out["saved"] = page.text_content("#editor-title")
        page.fill('#class-form [name="ceil"]', "1kbit")
        page.click("#save")
        page.wait_for_selector('#class-form .err[data-for="ceil"]:not(:empty)')
        out["ceil_error"] = page.text_content('#class-form .err[data-for="ceil"]')
        out["update_ms"] = page.evaluate("window.imqdPerf")
        browser.close()
    return out


if __name__ == "__main__":
    url, name, rate, new_rate, shot = sys.argv[1:6]
    print(json.dumps(main(url, name, float(rate), new_rate, shot)))
