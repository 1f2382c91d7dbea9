"""leaderboard.html in a real headless chromium: loads cleanly, sorts, filters, shows images.

Static checks cannot tell whether the page's script runs (a wrong CSP hash blocks it
silently), whether escaped names round-trip to the right text, or whether images decode;
a browser can.  Skipped only where chromium/chromedriver are not installed; CI installs them.
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
    host = PluginHost.create(entry_points=False, plugins=[robench_reports.plugin])
    write_reports(results, run_dir, context(run_dir, name=EVIL_RUN), reporters=["html"],
                  host=host)
    path = run_dir / "leaderboard.html"
    browser.open(path.as_uri())
    return path


def _column(browser, header: str) -> int:
    index = browser.js(
        "var cells = document.querySelectorAll('#board thead th');"
        "for (var i = 0; i < cells.length; i++) {"
        "  if (cells[i].textContent === arguments[0]) { return i; } }"
        "return -1;", header)
    assert index >= 0, f"no column {header!r}"
    return index


def _values(browser, column: int) -> list[str]:
    """The sort keys of one column, top to bottom as currently shown."""
    return browser.js(
        "var column = arguments[0];"
        "return Array.prototype.map.call(document.querySelectorAll('#board tbody tr'),"
        " function (r) { return r.cells[column].getAttribute('data-v'); });", column)


def _row_models(browser) -> list[str]:
    return browser.js(
        "return Array.prototype.map.call(document.querySelectorAll('#board tbody tr'),"
        " function (r) { return r.getAttribute('data-model'); });")


def test_page_loads_without_errors_and_runs_no_injected_code(browser, page):
    assert browser.js("return document.readyState") == "complete"
    assert browser.js("return window.__robenchErrors") == []
    assert browser.console_errors() == []
    assert browser.js("return window.__pwned === undefined")
    # the only script is the page's own; every image is a data: URI
    assert browser.js("return document.scripts.length") == 1
    assert browser.js("return document.querySelectorAll('img:not([src^=\"data:\"])').length") \
        == 0
    assert browser.js("return document.title") == f"robench leaderboard: {EVIL_RUN}"
    assert browser.js("return document.querySelector('h1').textContent") == EVIL_RUN


def test_table_has_the_leaderboard_rows(browser, page):
    rows = browser.js("return document.querySelectorAll('#board tbody tr').length")
    assert rows == 8
    models = set(_row_models(browser))
    assert EVIL_MODEL in models  # escaped in the file, the exact text in the DOM
    assert len(models) == 4
    assert browser.js("return document.getElementById('count').textContent") == "8 of 8 rows"


def test_clicking_a_header_sorts_the_table(browser, page):
    clean = _column(browser, "clean %")
    header = browser.find(f"#board thead th:nth-child({clean + 1})")
    browser.click(header)  # numbers sort best first
    values = [float(v) for v in _values(browser, clean)]
    assert values == sorted(values, reverse=True) and values[0] == pytest.approx(0.97)
    browser.click(header)
    values = [float(v) for v in _values(browser, clean)]
    assert values == sorted(values)
    assert browser.js(f"return document.querySelectorAll('#board thead th')[{clean}]"
                      ".getAttribute('aria-sort')") == "ascending"
    model = _column(browser, "model")
    browser.click(browser.find(f"#board thead th:nth-child({model + 1})"))
    names = _values(browser, model)
    assert names == sorted(names, key=str.lower)
    rank = _column(browser, "rank")
    browser.click(browser.find(f"#board thead th:nth-child({rank + 1})"))
    browser.click(browser.find(f"#board thead th:nth-child({rank + 1})"))
    # ranks are per test set; equal keys keep the leaderboard order (source before target)
    assert [float(v) for v in _values(browser, rank)] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert browser.js("return document.querySelector('#board tbody tr')"
                      ".getAttribute('data-domain')") == "source"
    assert browser.js("return window.__robenchErrors") == []


def test_typing_in_the_filter_hides_other_rows(browser, page):
    box = browser.find("#filter")
    browser.type(box, "dann target")
    visible = browser.js(
        "return Array.prototype.filter.call(document.querySelectorAll('#board tbody tr'),"
        " function (r) { return !r.hidden; }).map(function (r) {"
        " return r.getAttribute('data-model') + '/' + r.getAttribute('data-domain'); });")
    assert visible == ["digits-cnn+linear+dann/target"]
    assert browser.js("return document.getElementById('count').textContent") == "1 of 8 rows"
    browser.js("var f = document.getElementById('filter'); f.value = '';"
               "f.dispatchEvent(new Event('input'));")
    assert browser.js("return document.getElementById('count').textContent") == "8 of 8 rows"


def test_pictures_are_present_and_decode(browser, page):
    stats = browser.js(
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
    assert browser.console_errors() == []


def test_the_error_capture_itself_sees_errors(browser, page, tmp_path):
    """Guards the checks above against passing vacuously: a broken page must be noticed."""
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"script-src 'sha256-AAAA'\">"
        "</head><body><script>window.ran = true;</script></body></html>")
    browser.open(broken.as_uri())
    assert browser.js("return window.ran === undefined")  # the CSP blocked it
    assert any("CSP" in e for e in browser.js("return window.__robenchErrors"))
    thrower = tmp_path / "thrower.html"
    thrower.write_text("<!DOCTYPE html><html><body><script>missingFunction();</script>"
                       "</body></html>")
    browser.open(thrower.as_uri())
    assert any("missingFunction" in e for e in browser.js("return window.__robenchErrors"))
    assert any("missingFunction" in e for e in browser.console_errors())
    browser.open(page.as_uri())  # leave the report open for anything that runs after
