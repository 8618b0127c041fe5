"""The try-it page in a real headless Chromium (Debian's, driven by Playwright) against a real
Serve app: type the key, upload real PNG files, see the generated image appear.

A screenshot of the finished page is left at /tmp/backdrop-page.png for a person to look at.
"""

from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from serve_stack import API_KEY, apps, deploy, png, product_rgba, reference_rgb, tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = "/tmp/backdrop-page.png"


@pytest.fixture(scope="module")
def url(serve_cluster):
    from backdrop import brands
    from backdrop.demo.synthetic import SyntheticConfig, make_catalog
    from backdrop.quality.qa import fit_scorer
    from backdrop.serving.auth import ApiKeys

    home = serve_cluster["home"] / "page"
    tiny_model(seed=3).save_pretrained(str(home / "generator"))
    # a QA scorer saved with it, so the page can ask for best-of-N (a small synthetic train split)
    catalog = make_catalog(str(home / "catalog"), SyntheticConfig(
        num_categories=3, train_per_category=4, heldout_per_category=0, pairs_per_category=0))
    fit_scorer(catalog["train"], str(home / "generator"))
    # two brand kits in the stack's registry, of which the key may use one (allowed_styles)
    (home / "ad.png").write_bytes(png(reference_rgb()))
    (home / "ad2.png").write_bytes(png(reference_rgb().transpose(Image.FLIP_LEFT_RIGHT)))
    brands.add_kit("northwind", [str(home / "ad.png"), str(home / "ad2.png")])
    brands.add_kit("umbrella", [str(home / "ad.png")])
    with apps("page"):
        yield deploy("page", "/", {"model_path": str(home / "generator"), "allowed_styles": ["northwind"],
                                   "api_key_sha256": [ApiKeys.digest(API_KEY)]}, url=serve_cluster["url"])


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not shutil.which(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make system-deps` (Debian package chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, url):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(90_000)
    page.goto(url + "/")
    yield page
    context.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("uploads")
    (d / "product.png").write_bytes(png(product_rgba()))
    (d / "reference.png").write_bytes(png(reference_rgb()))
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    return d


def connect(page, key: str = API_KEY) -> None:
    page.fill("#api-key", key)
    page.click("#connect")


def test_upload_product_and_reference_and_see_the_result(page, files):
    connect(page)
    page.wait_for_selector("#category[data-ready=true]")
    assert page.locator("#category option").all_inner_texts() == ["mug", "lamp", "watch"]
    assert "connected" in page.inner_text("#key-status")
    page.set_input_files("#product", str(files / "product.png"))
    page.set_input_files("#reference", str(files / "reference.png"))
    page.select_option("#category", "lamp")
    page.fill("#prompt", "soft morning light")
    page.fill("#steps", "2")
    page.select_option("#scheduler", "dpm++")
    page.fill("#seed", "5")
    page.click("#generate")

    result = page.wait_for_selector("img.result")
    page.wait_for_function("document.querySelector('img.result').complete && "
                           "document.querySelector('img.result').naturalWidth > 0")
    assert page.evaluate("document.querySelector('img.result').naturalWidth") == 64
    assert page.locator("#inputs img").count() == 2  # product and reference, next to the result
    assert page.is_hidden("#error")
    link = page.locator("#results a[download]")
    assert link.get_attribute("download").endswith("seed5.png")
    src = result.get_attribute("src")
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))
    keep = np.asarray(product_rgba())[..., 3] >= 128
    assert np.array_equal(out[keep], np.asarray(product_rgba())[..., :3][keep])  # product untouched
    assert page.inner_text("#meta").startswith("generator, version path-") and "2 dpm++ steps" in page.inner_text("#meta")
    page.screenshot(path=SCREENSHOT, full_page=True)


def test_the_brand_styles_a_key_may_use_are_listed_and_one_styles_the_result(page, files):
    connect(page)
    page.wait_for_selector("#style[data-ready=true]")
    options = page.locator("#style option").all_inner_texts()
    assert options[1:] == ["northwind (v1, 2 references)"]  # umbrella exists but this key may not use it
    page.set_input_files("#product", str(files / "product.png"))
    page.select_option("#category", "mug")
    page.select_option("#style", "northwind")
    page.fill("#steps", "2")
    page.fill("#seed", "4")
    page.click("#generate")
    page.wait_for_function("document.querySelector('img.result') && document.querySelector('img.result').complete")
    assert "style northwind/1" in page.inner_text("#meta") and page.is_hidden("#error")


def test_errors_are_shown_readably(page, files):
    page.set_input_files("#product", str(files / "product.png"))
    page.click("#generate")
    assert "API key" in page.inner_text("#error")

    connect(page, "not-a-key")
    page.wait_for_function("document.querySelector('#error').textContent.includes('401')")
    assert "API key" in page.inner_text("#error")

    connect(page)
    page.wait_for_selector("#category[data-ready=true]")
    page.set_input_files("#product", str(files / "broken.png"))
    page.fill("#steps", "2")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#error').textContent.includes('415')")
    text = page.inner_text("#error")
    assert "corrupt_image" in text and "not a decodable image" in text and "Traceback" not in text
    assert page.locator("img.result").count() == 0


def test_placements_side_by_side_with_their_scores_and_kept_candidate(page, files):
    connect(page)
    page.wait_for_selector("#category[data-ready=true]")
    page.set_input_files("#product", str(files / "product.png"))
    page.select_option("#category", "mug")
    page.fill("#steps", "1")
    page.fill("#seed", "2")
    page.check("input[name=placement][value='1:1']")
    page.check("input[name=placement][value='16:9']")
    page.fill("#candidates", "2")
    page.click("#generate")

    page.wait_for_function("document.querySelectorAll('img.result').length === 2 && "
                           "[...document.querySelectorAll('img.result')].every((i) => i.complete && i.naturalWidth)")
    figures = page.locator("#results figure")
    assert [figures.nth(i).get_attribute("data-placement") for i in range(2)] == ["1:1", "16:9"]
    sizes = page.evaluate("[...document.querySelectorAll('img.result')].map((i) => [i.naturalWidth, i.naturalHeight])")
    assert sizes[0][0] == sizes[0][1] and sizes[1][0] > sizes[1][1]
    for i, name in enumerate(["1:1", "16:9"]):
        text = figures.nth(i).inner_text()
        assert text.startswith(f"{name} · {sizes[i][0]}×{sizes[i][1]} · seed 2")
        assert "QA " in text and "kept candidate" in text and "of 2" in text and "device-s" in text
    assert "16x9-seed2.png" in figures.nth(1).locator("a[download]").get_attribute("download")
    assert "device-s" in page.inner_text("#meta") and page.is_hidden("#error")
    page.screenshot(path=SCREENSHOT.replace(".png", "-placements.png"), full_page=True)
