"""leaderboard.html in a real headless chromium (selenium): loads cleanly, fits the window,
sorts, filters, shows its charts and images.

Static checks cannot tell whether the page's script runs (a wrong CSP hash blocks it
silently), whether escaped names round-trip to the right text, whether images decode, or
whether the table fits the screen; a browser can.  Skipped where chromium or chromedriver is
missing (the message names which); under CI=true that is a failure instead.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import robench_reports.plugin

from robench.host import PluginHost
from robench.leaderboard import write_reports

EVIL_MODEL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
EVIL_RUN = "<img src=x onerror=alert(1)> run"


class By:
    """selenium's locator strategies (the W3C names), without importing selenium at
    collection: where it is missing, the browser fixture says so (and fails under CI)."""

    CSS_SELECTOR = "css selector"
    ID = "id"
    TAG_NAME = "tag name"


DEFAULT_EPS = (("2/255", 2 / 255), ("4/255", 4 / 255), ("8/255", 8 / 255))


def _write_page(run_dir: Path, results: pd.DataFrame, ctx: dict) -> Path:
    host = PluginHost.create(entry_points=False, plugins=[robench_reports.plugin])
    write_reports(results, run_dir, ctx, reporters=["html"], host=host)
    return run_dir / "leaderboard.html"


@pytest.fixture(scope="module")
def page(tmp_path_factory, browser, build_results, model_spec, examples, context) -> Path:
    """A report with an XSS-laden model name and run title, and example images."""
    run_dir = tmp_path_factory.mktemp("browser-run")
    base = build_results()
    extra = build_results([model_spec("digits-cnn", "mlp", "none",
                                      {"source": 0.97, "target": 0.5},
                                      {"source": 0.9, "target": 0.9}, name=EVIL_MODEL)])
    results = pd.concat([base, extra], ignore_index=True)
    examples(run_dir / "examples", results)
    path = _write_page(run_dir, results, context(run_dir, name=EVIL_RUN))
    browser.get(path.as_uri())
    return path


@pytest.fixture(scope="module")
def default_grid_page(tmp_path_factory, build_results, model_spec, examples, context) -> Path:
    """The default grid's shape: 2 backbones x 2 adaptors x source/target, fgsm, pgd and
    noise at 3 linf eps, with the long names, flags, a near-chance model and an incomplete
    headline that a real run has."""
    run_dir = tmp_path_factory.mktemp("default-grid")
    models = [model_spec(backbone, "linear", adaptor, {"source": 0.97, "target": clean},
                         {"source": 0.5, "target": 0.9})
              for backbone in ("digits-cnn", "timm:test_resnet")
              for adaptor, clean in (("none", 0.143), ("dann", 0.48))]
    results = build_results(models, l2=False, linf_eps=DEFAULT_EPS, noise=True,
                            run="default")
    near = (results["domain"] == "target") & (results["clean_acc"] < 0.15)
    results.loc[near, "flags"] = "near-chance"
    worst = (results["attack"] == "worst-case") & (results["eps_label"] == "8/255")
    first = results.index[worst][0]
    results.loc[first, ["status", "flags"]] = ["incomplete", "incomplete-worst-case:pgd"]
    examples(run_dir / "examples", results)
    return _write_page(run_dir, results, context(run_dir, name="default"))


def _column(browser, header: str) -> int:
    index = browser.execute_script(
        "var cells = document.querySelectorAll('#board thead th');"
        "for (var i = 0; i < cells.length; i++) {"
        "  if (cells[i].textContent === arguments[0]) { return i; } }"
        "return -1;", header)
    assert index >= 0, f"no column {header!r}"
    return index


def _values(browser, column: int, block: int | None = None) -> list[str]:
    """The sort keys of one column, top to bottom as currently shown."""
    return browser.execute_script(
        "var column = arguments[0], block = arguments[1];"
        "var scope = block === null ? document : document.querySelectorAll('#board tbody')"
        "[block];"
        "return Array.prototype.map.call(scope.querySelectorAll('tr[data-model]'),"
        " function (r) { return r.cells[column].getAttribute('data-v'); });", column, block)


def _row_models(browser) -> list[str]:
    return browser.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('#board tr[data-model]'),"
        " function (r) { return r.getAttribute('data-model'); });")


def _click_header(browser, column: int) -> None:
    browser.find_element(By.CSS_SELECTOR, f"#board thead th:nth-child({column + 1})").click()


def test_page_loads_without_errors_and_runs_no_injected_code(browser, page, console_errors):
    assert browser.execute_script("return document.readyState") == "complete"
    assert browser.execute_script("return window.__robenchErrors") == []
    assert console_errors(browser) == []
    assert browser.execute_script("return window.__pwned === undefined")
    # the only script is the page's own; every image is a data: URI
    assert browser.execute_script("return document.scripts.length") == 1
    assert browser.execute_script(
        "return document.querySelectorAll('img:not([src^=\"data:\"])').length") == 0
    assert browser.title == f"robench leaderboard: {EVIL_RUN}"
    assert browser.find_element(By.TAG_NAME, "h1").text == EVIL_RUN


def test_table_has_the_leaderboard_rows_grouped_by_test_set(browser, page):
    assert len(_row_models(browser)) == 8
    models = set(_row_models(browser))
    assert EVIL_MODEL in models  # escaped in the file, the exact text in the DOM
    assert len(models) == 4
    assert browser.find_element(By.ID, "count").text == "8 of 8 rows"
    heads = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#board tr.block-head")]
    assert heads == ["Source domain · test set digits · 4 models",
                     "Target domain · test set digits-m · 4 models"]
    # ranks restart under each header, never silently
    rank = _column(browser, "rank")
    assert [float(v) for v in _values(browser, rank, 0)] == [1, 2, 3, 4]
    assert [float(v) for v in _values(browser, rank, 1)] == [1, 2, 3, 4]


def test_clicking_a_header_sorts_within_each_test_set(browser, page):
    clean = _column(browser, "clean %")
    _click_header(browser, clean)  # numbers sort best first
    for block in (0, 1):
        values = [float(v) for v in _values(browser, clean, block)]
        assert values == sorted(values, reverse=True)
    assert float(_values(browser, clean)[0]) == pytest.approx(0.97)
    _click_header(browser, clean)
    values = [float(v) for v in _values(browser, clean, 0)]
    assert values == sorted(values)
    assert browser.execute_script(f"return document.querySelectorAll('#board thead th')"
                                  f"[{clean}].getAttribute('aria-sort')") == "ascending"
    model = _column(browser, "model")
    _click_header(browser, model)
    names = _values(browser, model, 1)
    assert names == sorted(names, key=str.lower)
    rank = _column(browser, "rank")
    _click_header(browser, rank)
    _click_header(browser, rank)
    assert [float(v) for v in _values(browser, rank)] == [1, 2, 3, 4, 1, 2, 3, 4]
    domains = browser.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('#board tr[data-model]'),"
        " function (r) { return r.getAttribute('data-domain'); });")
    assert domains == ["source"] * 4 + ["target"] * 4  # rows never leave their test set
    assert browser.execute_script("return window.__robenchErrors") == []


def test_typing_in_the_filter_hides_other_rows(browser, page):
    box = browser.find_element(By.ID, "filter")
    box.send_keys("dann target")
    visible = browser.execute_script(
        "return Array.prototype.filter.call(document.querySelectorAll('#board tr[data-model]'),"
        " function (r) { return !r.hidden && !r.parentNode.hidden; }).map(function (r) {"
        " return r.getAttribute('data-model') + '/' + r.getAttribute('data-domain'); });")
    assert visible == ["digits-cnn+linear+dann/target"]
    assert browser.find_element(By.ID, "count").text == "1 of 8 rows"
    # the source block has no match: its header row is hidden with it
    assert browser.execute_script(
        "return document.querySelectorAll('#board tbody')[0].hidden") is True
    browser.execute_script("var f = document.getElementById('filter'); f.value = '';"
                           "f.dispatchEvent(new Event('input'));")
    assert browser.find_element(By.ID, "count").text == "8 of 8 rows"


def test_pictures_are_present_and_decode(browser, page, console_errors):
    stats = browser.execute_script(
        "var imgs = Array.prototype.slice.call(document.images);"
        "return {total: imgs.length,"
        " png: imgs.filter(function (i) { return i.src.indexOf('data:image/png;base64,') === 0;"
        " }).length,"
        " broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })"
        ".length,"
        " plots: document.querySelectorAll('img.plot').length,"
        " examples: document.querySelectorAll('#examples figure.example').length,"
        " classes: document.querySelectorAll('#examples .classes img').length};")
    assert stats["plots"] == 3  # curves, heatmap, source-vs-target bars
    assert stats["examples"] == 8  # one strip per model and domain
    assert stats["classes"] == 4 * 10  # class-maximisation images, once per model
    assert stats["png"] == stats["total"] and stats["broken"] == 0
    assert stats["total"] == 3 + 8 * 3 * 6 + 40
    assert console_errors(browser) == []


def test_the_default_grid_table_fits_1400_px_and_every_chart_is_shown(
        browser, default_grid_page, console_errors):
    browser.get(default_grid_page.as_uri())
    assert browser.execute_script("return window.innerWidth") == 1400
    size = browser.execute_script(
        "var wrap = document.querySelector('.table-wrap');"
        "return {client: wrap.clientWidth, scroll: wrap.scrollWidth,"
        " page: document.documentElement.scrollWidth, inner: window.innerWidth,"
        " right: Math.max.apply(null, Array.prototype.map.call("
        "   document.querySelectorAll('#board th, #board td'),"
        "   function (c) { return c.getBoundingClientRect().right; }))};")
    # no horizontal scrolling, in the table or the page: every cell is on screen
    assert size["scroll"] <= size["client"], size
    assert size["page"] <= size["inner"], size
    assert size["right"] <= size["inner"], size
    headers = [e.text.replace("\n", " ") for e in
               browser.find_elements(By.CSS_SELECTOR, "#board thead th")]
    # gap and gain come right after the headline, which is shown once
    assert headers[:9] == ["rank", "model", "n", "clean %", "robust % linf 8/255",
                           "domain gap clean pp", "domain gap robust pp",
                           "adapt. gain clean pp", "adapt. gain robust pp"]
    assert not any("8/255" in h for h in headers[5:])
    assert not {"backbone", "head", "adaptor"} & set(headers)
    # the parts are a hover away
    title = browser.find_element(By.CSS_SELECTOR, "#board td.name").get_attribute("title")
    assert "backbone: " in title and "adaptor: " in title
    # the near-chance model is last of the target block and marked; the incomplete headline
    # is marked in its cell
    target = browser.find_elements(By.CSS_SELECTOR, "#board tbody")[1]
    last = target.find_elements(By.CSS_SELECTOR, "tr[data-model]")[-1]
    assert "near chance" in last.find_element(By.CSS_SELECTOR, "td.name").text
    marked = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#board td.headline")
              if "incomplete" in e.text]
    assert len(marked) == 1 and marked[0].startswith("47.5")
    charts = browser.execute_script(
        "return ['curves', 'heatmap', 'domains'].map(function (id) {"
        " var img = document.querySelector('#' + id + ' img.plot');"
        " return img ? [id, img.naturalWidth, img.getBoundingClientRect().width] : [id, 0, 0];"
        "});")
    for name, natural, shown in charts:
        assert natural > 0, f"chart {name} missing or broken"
        assert shown > 300, f"chart {name} drawn only {shown} px wide"
    curves = dict((name, shown) for name, _, shown in charts)["curves"]
    assert curves >= 900  # two domain panels side by side, readable at a glance
    assert browser.execute_script("return window.__robenchErrors") == []
    assert console_errors(browser) == []


def test_the_error_capture_itself_sees_errors(browser, page, tmp_path, console_errors):
    """Guards the checks above against passing vacuously: a broken page must be noticed."""
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"script-src 'sha256-AAAA'\">"
        "</head><body><script>window.ran = true;</script></body></html>")
    browser.get(broken.as_uri())
    assert browser.execute_script("return window.ran === undefined")  # the CSP blocked it
    assert any("CSP" in e for e in browser.execute_script("return window.__robenchErrors"))
    thrower = tmp_path / "thrower.html"
    thrower.write_text("<!DOCTYPE html><html><body><script>missingFunction();</script>"
                       "</body></html>")
    browser.get(thrower.as_uri())
    assert any("missingFunction" in e
               for e in browser.execute_script("return window.__robenchErrors"))
    assert any("missingFunction" in e for e in console_errors(browser))
    wide = tmp_path / "wide.html"  # the fit check must see an overflowing table
    wide.write_text("<!DOCTYPE html><html><body><div class='table-wrap' style='overflow-x:auto'>"
                    "<table><tr><td style='min-width:3000px'>x</td></tr></table></div>"
                    "</body></html>")
    browser.get(wide.as_uri())
    assert browser.execute_script("var w = document.querySelector('.table-wrap');"
                                  "return w.scrollWidth > w.clientWidth")
    browser.get(page.as_uri())  # leave the report open for anything that runs after
