"""A screenshot of the search page: ``lsb-mm serve`` on a loopback port, a text query typed into the
page in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium), the
plain embedding shown beside LexSemBridge, and the page saved as a PNG.

    python3 scripts/serve_screenshot.py --model runs/demo/model-slr --index stamps=runs/demo/index-slr \\
        --text "a red apple" --out docs/serve.png
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def chromium_paths():
    """``(browser, driver)``: Debian's chromium and chromedriver on PATH, each None when missing."""
    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


def chrome(width: int = 1280, height: int = 900):
    """Headless Debian Chromium under Selenium with Debian's chromedriver (no download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = chromium_paths()
    if binary is None or driver is None:
        raise SystemExit("needs the Debian packages chromium and chromium-driver (bash scripts/setup.sh)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def main(argv=None) -> int:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from lsb_mm.serving.background import running_server

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--index", required=True, metavar="NAME=FOLDER")
    ap.add_argument("--text", default="a red apple")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--compare", action="store_true", help="show the plain embedding beside LexSemBridge")
    ap.add_argument("--out", default="docs/serve.png")
    args = ap.parse_args(argv)
    with running_server(["--model", args.model, "--index", args.index]) as url:
        driver = chrome(1280, 1000)
        try:
            wait = WebDriverWait(driver, 120)
            driver.get(url + "/")
            wait.until(lambda d: d.find_elements("css selector", "#index option"))
            if args.compare:
                driver.find_element("id", "compare").click()
            k = driver.find_element("id", "k")
            k.clear()
            k.send_keys(str(args.k))
            driver.find_element("id", "q").send_keys(args.text, Keys.ENTER)
            wait.until(lambda d: "results for" in d.find_element("id", "status").text)
            wait.until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('li.card img')].every((i) => i.complete && i.naturalWidth > 0)"))
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            driver.save_screenshot(args.out)
        finally:
            driver.quit()
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
