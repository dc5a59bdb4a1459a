"""The search page in a real browser: headless Debian Chromium, driven by Selenium through Debian's
chromedriver, against ``lsb-mm serve`` on a loopback port. Text query -> result cards; an uploaded
image finds itself first; "more like this"; drag-and-drop; the plain column; a readable error."""
import os

import pytest

import helpers
from conftest import need

pytestmark = pytest.mark.browser

WAIT = 60  # seconds for any one thing to appear


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    try:
        import selenium  # noqa: F401
    except ImportError:
        need(False, "selenium not installed (pip install -e '.[dev]')")
    from helpers import load

    need(None not in load("serve_screenshot").chromium_paths(), "Debian chromium and chromium-driver not installed (scripts/setup.sh)")
    import lsb_mm
    from lsb_mm.cli import main
    from lsb_mm.serving.background import running_server

    w = tmp_path_factory.mktemp("browser")
    lsb_mm.create_model("open_clip:lsb-tiny-test", head="slr").save_pretrained(str(w / "m"))
    helpers.labelled_folder(str(w / "imgs"), per_class=2)
    assert main(["index", "--model", str(w / "m"), "--images", str(w / "imgs"), "--output", str(w / "img.index"), "-q"]) == 0
    with running_server(["--model", str(w / "m"), "--index", f"shapes={w / 'img.index'}"],
                        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}) as url:
        yield w, url


@pytest.fixture(scope="module")
def driver(site):
    from helpers import load

    driver = load("serve_screenshot").chrome()  # the same headless Chromium the docs' screenshot uses
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(driver, site):
    """The search page loaded afresh: each test starts from the page as a user first sees it."""
    driver.get(site[1] + "/")
    wait(driver, lambda d: d.find_elements("css selector", "#index option"))
    return driver


def text_search(browser, query):
    """Type ``query`` into the search box and wait for its result cards."""
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element("id", "q")
    box.clear()
    box.send_keys(query, Keys.ENTER)
    wait(browser, lambda d: "results for" in search_status(d) and first_ids(d))


def wait(driver, condition):
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:  # a card re-rendered between finding it and reading it is looked at again on the next poll
        return WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except TimeoutException:
        pytest.fail(f"not seen within {WAIT} s; the page shows status {search_status(driver)!r}, error "
                    f"{driver.find_element('id', 'error').text!r}, cards {first_ids(driver)}")


def first_ids(driver, column=0):
    cols = driver.find_elements("css selector", "#results .column")
    if len(cols) <= column:
        return []
    return [c.get_attribute("data-id") for c in cols[column].find_elements("css selector", "li.card")]


def search_status(driver):
    return driver.find_element("id", "status").text


def test_text_query_shows_result_cards(browser):
    text_search(browser, "a red circle")
    cards = browser.find_elements("css selector", "li.card")
    assert len(cards) == 12 and all(c.find_element("css selector", "img") for c in cards)
    assert wait(browser, lambda d: d.find_elements("css selector", "#tokens .token")), "query tokens are listed"
    wait(browser, lambda d: d.execute_script("return document.querySelector('li.card img').naturalWidth") > 0)


def test_uploaded_image_finds_itself_first(browser, site):
    from lsb_mm.data.images import list_image_files

    w, _ = site
    path = list_image_files(str(w / "imgs"))[5]
    own_id = os.path.relpath(path, w / "imgs")
    browser.find_element("id", "file").send_keys(path)
    wait(browser, lambda d: "image " in search_status(d) and first_ids(d)[:1] == [own_id])


def test_more_like_this(browser):
    text_search(browser, "a green square")
    ids = first_ids(browser)
    target = ids[3]
    card = browser.find_elements("css selector", "li.card")[3]
    card.find_element("css selector", "button.more").click()
    wait(browser, lambda d: f"items like {target}" in search_status(d))
    assert first_ids(browser)[0] == target


def test_dropped_image_is_searched(browser, site):
    text_search(browser, "blue stripes")
    target = first_ids(browser)[2]
    browser.execute_async_script("""
        const [url, done] = arguments;
        fetch(url).then((r) => r.blob()).then((blob) => {
          const dt = new DataTransfer();
          dt.items.add(new File([blob], "dropped.png", { type: "image/png" }));
          document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
          done(true);
        });""", f"{site[1]}/items/shapes/{target}/thumbnail")
    wait(browser, lambda d: "image dropped.png" in search_status(d) and first_ids(d)[:1] == [target])


def test_plain_embedding_beside_lexsembridge(browser):
    text_search(browser, "a yellow dot")
    browser.find_element("id", "compare").click()  # re-runs the last search both ways
    wait(browser, lambda d: len(d.find_elements("css selector", "#results .column")) == 2 and first_ids(d, 1))
    heads = [h.text for h in browser.find_elements("css selector", "#results .column h2")]
    assert heads == ["LexSemBridge", "Plain embedding"]
    browser.find_element("id", "compare").click()
    wait(browser, lambda d: len(d.find_elements("css selector", "#results .column")) == 1)


def test_keyboard_and_readable_errors(browser, site):
    from selenium.webdriver.common.keys import Keys

    def shown_error(d):
        box = d.find_element("id", "error")
        return box.text if box.is_displayed() and box.text else None

    browser.find_element("tag name", "body").send_keys("/")
    assert browser.switch_to.active_element.get_attribute("id") == "q"
    k = browser.find_element("id", "k")
    k.clear()
    k.send_keys("5000")
    box = browser.find_element("id", "q")
    box.clear()
    box.send_keys("a blue square", Keys.ENTER)
    assert "from 1 to 1000" in wait(browser, shown_error)
    k.clear()
    k.send_keys("6")
    bad = site[0] / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")  # the server refuses it, and the page says why
    browser.find_element("id", "file").send_keys(str(bad))
    message = wait(browser, lambda d: (shown_error(d) or "") if "decodable" in (shown_error(d) or "") else None)
    assert "broken.png" in message or "uploaded image" in message, message
    box.send_keys(Keys.ENTER)
    wait(browser, lambda d: not d.find_element("id", "error").is_displayed() and len(first_ids(d)) == 6)
    browser.save_screenshot(str(site[0] / "page.png"))
    assert os.path.getsize(site[0] / "page.png") > 10_000
