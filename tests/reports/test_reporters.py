"""The csv, md, json and html reporters: registration, files that parse, escaping, safety."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import robench_reports.plugin

from robench.errors import UsageError
from robench.host import PluginHost
from robench.leaderboard import build_leaderboard, write_reports
from robench.merge import report_run

EVIL_SCRIPT = "<script>alert(1)</script>"
EVIL_IMG = "<img src=x onerror=alert(1)>"


class PageParser(HTMLParser):
    """Collects what a self-containment check needs: tags, img sources, links, scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self.tags: list[str] = []
        self.csp = ""
        self.rows = 0
        self.attributes: set[str] = set()
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.attributes.update(values)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(values.get("src") or "")
        for key in ("src", "href", "action", "srcset", "poster", "data"):
            if values.get(key) and not str(values[key]).startswith(("#", "data:")):
                self.urls.append(f"{tag} {key}={values[key]}")
        if tag == "meta" and values.get("http-equiv") == "Content-Security-Policy":
            self.csp = values.get("content") or ""
        if tag == "tr":
            self.rows += 1
        self._in_script = tag == "script"
        if tag == "script":
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def test_plugin_registers_the_four_reporters(reports_host):
    specs = reports_host.specs("reporter")
    assert set(specs) == {"csv", "md", "json", "html"}
    assert specs["json"].files == ("results.json", "leaderboard.json")
    assert specs["html"].files == ("leaderboard.html",)
    assert all(spec.description for spec in specs.values())


def test_the_entry_point_registers_them_too(monkeypatch):
    monkeypatch.setenv("ROBENCH_PLUGINS", "reports")  # load only this entry point
    host = PluginHost.create()
    assert {"csv", "md", "json", "html"} <= set(host.names("reporter"))


@pytest.fixture(scope="module")
def default_reports(tmp_path_factory, build_results, examples, context
                    ) -> tuple[Path, list[Path], pd.DataFrame]:
    """Every reporter run once on the default grid with example images (shared: ~2 s)."""
    run_dir = tmp_path_factory.mktemp("reports")
    results = build_results()
    examples(run_dir / "examples", results)
    host = PluginHost.create(entry_points=False, plugins=[robench_reports.plugin])
    written = write_reports(results, run_dir, context(run_dir), host=host)
    return run_dir, written, results


def test_every_reporter_writes_files_that_parse(default_reports):
    tmp_path, written, results = default_reports
    names = sorted(p.name for p in written)
    assert names == ["leaderboard.csv", "leaderboard.html", "leaderboard.json",
                     "leaderboard.md", "results.json"]
    assert all(p.exists() and p.stat().st_size > 0 for p in written)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries

    board = build_leaderboard(results)
    csv = pd.read_csv(tmp_path / "leaderboard.csv")
    assert list(csv.columns) == list(board.columns)
    assert list(csv["model"]) == list(board["model"])
    assert np.allclose(csv["headline_acc"], board["headline_acc"])

    leaderboard = json.loads((tmp_path / "leaderboard.json").read_text())
    assert leaderboard["name"] == "unit-run"
    assert leaderboard["headline"]["column"] == "robust[linf@8/255]"
    assert leaderboard["provenance"]["git_revision"] == "abc1234"
    assert [r["model"] for r in leaderboard["leaderboard"]] == list(board["model"])
    assert leaderboard["leaderboard"][0]["adapt_gain_clean"] is None  # NaN -> null
    full = json.loads((tmp_path / "results.json").read_text())
    assert len(full["results"]) == len(results)
    assert "robust_acc" in full["columns"]

    md = (tmp_path / "leaderboard.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + 6 + 2 + 6  # main table and per-eps table, header + align rows
    assert "Headline metric: worst-case robust accuracy, linf @ 8/255" in md
    assert "git\\_revision" in md

    page = (tmp_path / "leaderboard.html").read_text()
    parser = PageParser()
    parser.feed(page)
    assert parser.rows >= 1 + 6 + 3 * 6  # board header + rows, example strips
    assert len([s for s in parser.images if s.startswith("data:image/png;base64,")]) >= 3


def test_html_is_self_contained_and_allows_only_its_own_script(default_reports):
    run_dir, _, _ = default_reports
    page = (run_dir / "leaderboard.html").read_text()
    parser = PageParser()
    parser.feed(page)
    assert parser.urls == []  # nothing fetched: no src/href outside data: and #anchors
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert parser.images and all(src.startswith("data:image/png;base64,")
                                 for src in parser.images)
    for src in parser.images[:5]:
        png = base64.b64decode(src.split(",", 1)[1])
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(parser.scripts) == 1
    digest = base64.b64encode(hashlib.sha256(parser.scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in parser.csp
    assert "default-src 'none'" in parser.csp and "img-src data:" in parser.csp


def _evil_results(build_results, model_spec):
    models = [
        model_spec("digits-cnn", "linear", "none", {"source": 0.9, "target": 0.6},
                   {"source": 0.5, "target": 0.5}, name=EVIL_SCRIPT),
        model_spec("digits-cnn", "linear", "dann", {"source": 0.8, "target": 0.7},
                   {"source": 0.5, "target": 0.5}, name=f"{EVIL_IMG} | a$b$c _x"),
    ]
    results = build_results(models, run=f"{EVIL_SCRIPT}{EVIL_IMG}")
    results.loc[0, "flags"] = f"<b>bold</b>;{EVIL_IMG}"
    return results


def test_untrusted_strings_are_escaped_in_md_and_html(tmp_path, build_results, model_spec,
                                                      reports_host, examples, context):
    results = _evil_results(build_results, model_spec)
    example_files = examples(tmp_path / "examples", results)
    # class names and dataset names in the npz are untrusted too
    with np.load(example_files[0], allow_pickle=False) as data:
        arrays = dict(data)
    arrays["class_names"] = np.array([EVIL_SCRIPT] + [f"{EVIL_IMG}{i}" for i in range(9)])
    arrays["dataset"] = np.array(EVIL_IMG)
    np.savez(example_files[0], **arrays)
    ctx = context(tmp_path, name=f"{EVIL_SCRIPT} run {EVIL_IMG}")
    ctx["provenance"]["note"] = EVIL_SCRIPT
    ctx["config"]["name"] = EVIL_IMG
    write_reports(results, tmp_path, ctx, host=reports_host)

    page = (tmp_path / "leaderboard.html").read_text()
    assert "<script>alert" not in page
    assert "<img src=x" not in page
    assert "<b>bold" not in page
    assert page.count("<script") == 1
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    parser = PageParser()
    parser.feed(page)
    assert set(parser.tags) <= {"html", "head", "meta", "title", "style", "body", "header",
                                "h1", "h2", "h3", "p", "nav", "a", "section", "div", "input",
                                "span", "table", "thead", "tbody", "tr", "th", "td", "figure",
                                "img", "figcaption", "br", "dl", "dt", "dd", "details",
                                "summary", "ol", "li", "script"}
    # escaped text stays inside its attribute value: no element has an event handler
    assert not [a for a in parser.attributes if a.startswith("on")]
    # the provenance is a definition list, also for nested values, not raw JSON
    assert '<dt>note</dt><dd>&lt;script&gt;alert(1)&lt;/script&gt;</dd>' in page
    assert "<dd>{" not in page

    md = (tmp_path / "leaderboard.md").read_text()
    assert "<script" not in md and "<img" not in md and "<b>" not in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    # a '|' in a model name must not split a table row: every row of a table has as many
    # unescaped pipes as its header
    blocks: list[list[str]] = [[]]
    for line in md.splitlines():
        if line.startswith("| "):
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    blocks = [b for b in blocks if b]
    assert len(blocks) == 2
    for block in blocks:
        assert len({len(re.findall(r"(?<!\\)\|", line)) for line in block}) == 1
    assert "a\\$b" not in md and "a$b$c" in md  # markdown keeps $; matplotlib got \$


def test_a_broken_example_file_is_reported_not_fatal(tmp_path, results, reports_host,
                                                     examples, context):
    examples(tmp_path / "examples", results)
    (tmp_path / "examples" / "zz-broken.npz").write_bytes(b"not a zip file")
    np.savez(tmp_path / "examples" / "zz-partial.npz", model=np.array("m"))
    write_reports(results, tmp_path, context(tmp_path), reporters=["html"], host=reports_host)
    page = (tmp_path / "leaderboard.html").read_text()
    assert "Example file skipped: zz-broken.npz" in page
    assert "Example file skipped: zz-partial.npz: missing key(s)" in page
    assert page.count('class="example"') == 6


def test_reports_for_an_empty_results_table(tmp_path, results, reports_host):
    empty = results.iloc[0:0]
    write_reports(empty, tmp_path / "empty", {}, host=reports_host)
    assert "No results." in (tmp_path / "empty" / "leaderboard.html").read_text()
    assert pd.read_csv(tmp_path / "empty" / "leaderboard.csv").empty


def test_reporter_parameters_are_validated(reports_host):
    with pytest.raises(UsageError, match="plain file name"):
        reports_host.build("reporter", "csv", stem="../escape")
    with pytest.raises(UsageError, match="max_examples"):
        reports_host.build("reporter", "html", max_examples=-1)
    with pytest.raises(UsageError, match="no parameter"):
        reports_host.build("reporter", "md", colour="red")


def test_report_run_rebuilds_reports_from_a_run_folder(tmp_path, results, reports_host,
                                                       examples):
    results.to_csv(tmp_path / "results.csv", index=False)
    (tmp_path / "run.json").write_text(json.dumps({
        "name": "from-disk",
        "config": {"name": "from-disk", "reporters": ["csv", "html"],
                   "params": {"reporter": {"html": {"max_examples": 2}}}},
        "provenance": {"seed": 0, "device": "cpu"},
    }))
    examples(tmp_path / "examples", results)
    written = report_run(tmp_path, host=reports_host)
    assert sorted(p.name for p in written) == ["leaderboard.csv", "leaderboard.html"]
    page = (tmp_path / "leaderboard.html").read_text()
    assert "<title>robench leaderboard: from-disk</title>" in page
    # max_examples=2 from the config: 2 images per row of each strip
    assert page.count("clean image of") == 2 * 6
    assert "source_file" not in pd.read_csv(tmp_path / "leaderboard.csv").columns
    with pytest.raises(UsageError, match="does not exist"):
        report_run(tmp_path / "nope", host=reports_host)


def test_near_chance_and_incomplete_headlines_are_marked_in_every_report(
        tmp_path, build_results, model_spec, reports_host):
    models = [
        model_spec("a", "linear", "none", {"source": 0.95, "target": 0.14},
                   {"source": 0.0, "target": 0.0}, name="broken"),
        model_spec("b", "linear", "none", {"source": 0.90, "target": 0.25},
                   {"source": 0.5, "target": 1.0}, name="useful"),
    ]
    results = build_results(models)
    results.loc[(results["model"] == "broken") & (results["domain"] == "target"),
                "flags"] = "near-chance"
    incomplete = ((results["model"] == "useful") & (results["domain"] == "source")
                  & (results["attack"] == "worst-case") & (results["eps_label"] == "8/255"))
    results.loc[incomplete, "status"] = "incomplete"
    write_reports(results, tmp_path, {"name": "marks"}, host=reports_host)

    board = pd.read_csv(tmp_path / "leaderboard.csv")
    target = board[board["domain"] == "target"]
    assert list(target["model"]) == ["useful", "broken"]
    assert list(target["near_chance"]) == [False, True]
    assert "incomplete" in set(board["headline_status"])
    rows = json.loads((tmp_path / "leaderboard.json").read_text())["leaderboard"]
    assert [r["near_chance"] for r in rows if r["domain"] == "target"] == [False, True]

    md = (tmp_path / "leaderboard.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| 2 | broken"))
    assert "(near chance: ranked last)" in line
    line = next(x for x in md.splitlines() if "| useful | digits | source" in x)
    assert "**(incomplete)**" in line

    page = (tmp_path / "leaderboard.html").read_text()
    broken_row = re.search(r'<tr data-model="broken" data-domain="target"[^>]*>.*?</tr>', page,
                           re.S).group(0)
    assert 'class="near-chance"' in broken_row and ">near chance</span>" in broken_row
    useful_row = re.search(r'<tr data-model="useful" data-domain="source"[^>]*>.*?</tr>', page,
                           re.S).group(0)
    assert ">incomplete</span>" in useful_row
    assert page.count(">near chance</span>") == 1 and page.count(">incomplete</span>") == 1
    assert "1 near chance, ranked last" in page


def test_the_html_table_leaves_out_the_parts_and_shows_the_headline_once(default_reports):
    run_dir, _, _ = default_reports
    page = (run_dir / "leaderboard.html").read_text()
    head = re.search(r"<thead>(.*?)</thead>", page, re.S).group(1)
    headers = re.findall(r">([^<>]+)</th>", head)
    assert headers[:5] == ["rank", "model", "n", "clean %", "robust % linf 8/255"]
    assert headers[5:9] == ["domain gap clean pp", "domain gap robust pp",
                            "adapt. gain clean pp", "adapt. gain robust pp"]
    assert sum("8/255" in h for h in headers) == 1
    assert not {"backbone", "head", "adaptor", "dataset", "domain"} & set(headers)
    # the parts are in the model cell's hover text
    assert 'title="backbone: digits-cnn\nhead: linear\nadaptor: dann' in page
    assert page.count('<tr class="block-head">') == 2


def test_the_perturbation_map_shows_structure_not_the_linf_speckle():
    """An Linf attack changes almost every pixel by +-eps: the raw map is one flat speckle.
    The report shows the change averaged over 3x3 pixels (and the channels), scaled per
    image to its largest value: coherent pushes stay saturated, sign noise fades."""
    from robench_reports.examples import perturbation_image
    from robench_reports.figures import diverging_rgb

    red, blue = diverging_rgb(np.array([1.0]))[0], diverging_rgb(np.array([-1.0]))[0]
    rng = np.random.default_rng(0)
    clean = np.full((2, 32, 32, 3), 120, dtype=np.uint8)
    signs = rng.choice([-1, 1], size=(2, 32, 32, 1)) * np.ones((1, 1, 1, 3), dtype=int)
    signs[:, 4:12, 4:12] = 1  # a block pushed brighter ...
    signs[:, 20:28, 20:28] = -1  # ... and one darker, on a background of sign noise
    budget = np.array([8, 2]).reshape(2, 1, 1, 1)  # 8/255 and 2/255
    adv = (clean.astype(int) + signs * budget).astype(np.uint8)
    raw = np.abs(adv.astype(int) - clean.astype(int))
    assert (raw == budget).all()  # every pixel moved by the full budget: raw shows nothing

    view = perturbation_image(clean, adv)
    assert view.window == 3 and view.images.shape == (2, 32, 32, 3)
    assert view.images.dtype == np.uint8
    assert "3×3" in view.label and "largest" in view.label
    # each image is scaled to its own largest local mean: the full budget inside a block
    assert view.scales == pytest.approx([8 / 255, 2 / 255])
    for image in view.images.astype(int):
        plus, minus, noise = image[6:10, 6:10], image[22:26, 22:26], image[14:18, 0:32]
        assert (plus == red).all() and (minus == blue).all()  # brighter, darker: full colour
        # sign noise averages out: far paler than the blocks on average
        paleness = noise.min(axis=-1).mean()
        assert paleness > plus.min(axis=-1).mean() + 60
        assert paleness > minus.min(axis=-1).mean() + 60


def test_the_perturbation_map_mean_is_over_channels_and_a_mirrored_window():
    from robench_reports.examples import local_mean, perturbation_image, smoothing_window
    from robench_reports.figures import diverging_rgb

    assert smoothing_window(8, 8) == 3 and smoothing_window(32, 32) == 3
    assert smoothing_window(224, 224) == 7 and smoothing_window(224, 96) == 3
    values = np.random.default_rng(1).normal(size=(2, 5, 6, 1))
    padded = np.pad(values, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="symmetric")
    naive = np.stack([[[padded[n, i:i + 3, j:j + 3, 0].mean() for j in range(6)]
                       for i in range(5)] for n in range(2)])[..., None]
    np.testing.assert_allclose(local_mean(values, 3), naive, atol=1e-12)
    # colour: the change of brightness, so opposite channel pushes cancel
    clean = np.full((2, 4, 4, 3), 100, dtype=np.uint8)
    adv = clean.copy()
    adv[0] += np.array([8, 8, 8], dtype=np.uint8)
    adv[1, ..., 0] += 8
    adv[1, ..., 2] -= 8
    view = perturbation_image(clean, adv)
    assert view.scales == pytest.approx([8 / 255, 0.0])
    assert (view.images[0] == diverging_rgb(np.array([1.0]))[0]).all()  # brighter: full red
    assert view.images[1].min() > 240  # no net change: white, and no division by zero
    # a grayscale strip ((k, H, W) or one channel) works the same way
    gray = perturbation_image(clean[..., :1], adv[..., :1])
    assert gray.images.shape == (2, 4, 4, 3) and gray.scales[0] == pytest.approx(8 / 255)
