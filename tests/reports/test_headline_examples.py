"""The report's example strips show the attack behind the headline at the headline eps
(issue 23), or a fallback that says what it stands in for.

The harness keeps a few examples per attack and eps (``select_examples``), the leaderboard
ranks the attacks at the headline threat and eps (``headline_attacks``), and the grid writes
the first candidate of ``example_choices`` that kept an example (``assemble``)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from robench_reports.html_report import HtmlReporter

import robench
from robench import examples as ex
from robench.leaderboard import headline_attacks

EPS = (2 / 255, 4 / 255, 8 / 255)


# --------------------------------------------------------------------------- the ranking


def test_the_headline_attack_is_the_one_that_fooled_the_most_at_the_headline_eps(
        build_results):
    results = build_results()
    ranking = headline_attacks(results)
    assert set(ranking["threat"]) == {"linf"} and set(ranking["eps_label"]) == {"8/255"}
    assert "worst-case" not in set(ranking["attack"])  # the worst case is no attack
    first = ranking[ranking["rank"] == 1]
    assert len(first) == len(results[["model", "domain"]].drop_duplicates())
    assert set(first["attack"]) == {"pgd"}  # the synthetic pgd is the stronger
    for (_, model, _, domain), group in ranking.groupby(["run", "model", "dataset", "domain"]):
        rows = results[(results.model == model) & (results.domain == domain)
                       & (results.threat == "linf") & np.isclose(results.eps, 8 / 255)
                       & (results.attack != "worst-case")]
        assert list(group["robust_acc"]) == sorted(rows["robust_acc"])
        assert list(group["rank"]) == list(range(1, len(group) + 1))


def test_a_failed_attack_is_not_the_headline_attack_and_ties_keep_the_results_order(
        build_results):
    results = build_results()
    at = (results.attack == "pgd") & np.isclose(results.eps, 8 / 255)
    results.loc[at, ["robust_acc", "status"]] = [np.nan, "failed"]
    ranking = headline_attacks(results)
    assert set(ranking.loc[ranking["rank"] == 1, "attack"]) == {"fgsm"}
    assert "pgd" not in set(ranking["attack"])
    tied = build_results()
    fgsm = tied[(tied.attack == "fgsm")].set_index(["model", "domain", "eps"])["robust_acc"]
    pgd = tied.attack == "pgd"
    tied.loc[pgd, "robust_acc"] = [fgsm[(m, d, e)] for m, d, e in
                                   zip(tied.loc[pgd, "model"], tied.loc[pgd, "domain"],
                                       tied.loc[pgd, "eps"], strict=True)]
    assert set(headline_attacks(tied).query("rank == 1")["attack"]) == {"fgsm"}


def test_without_attack_rows_there_is_no_headline_attack(build_results):
    results = build_results()
    clean_only = results[results.attack == "fgsm"].assign(threat="none", eps=0.0,
                                                          attack="clean")
    assert headline_attacks(clean_only).empty


# --------------------------------------------------------------------------- what a task keeps


def test_a_task_keeps_a_few_examples_per_eps_those_that_needed_it_first():
    # samples 0-5 fooled at the first eps, 10-13 at the second, 20 at the third
    found = {**{i: 0 for i in range(6)}, **{i: 1 for i in range(10, 14)}, 20: 2}
    kept, at = ex.select_examples(found, 3, nested=True, per_eps=3)
    # eps 0: three of its own; eps 1: three of its own; eps 2: its one, then the next larger
    assert kept == [0, 1, 2, 10, 11, 12, 20]
    assert at.shape == (7, 3) and at.dtype == bool
    assert at[kept.index(0)].tolist() == [True, True, True]  # inside every larger ball
    assert at[kept.index(10)].tolist() == [False, True, True]
    assert at[kept.index(20)].tolist() == [False, False, True]
    # a corruption's severities are not nested: an example counts at its own only
    kept, at = ex.select_examples(found, 3, nested=False, per_eps=3)
    assert kept == [0, 1, 2, 10, 11, 12, 20] and at.sum(axis=1).tolist() == [1] * 7
    assert ex.select_examples({}, 3, nested=True, per_eps=3)[0] == []


# --------------------------------------------------------------------------- the grid's choice


def _task(run_dir: Path, key: str, attack: str, found: dict[int, int], *,
          eps: tuple[float, ...] = EPS, threat: str = "linf") -> None:
    """An attack task file as the worker writes it, with recognisable images: sample i's
    clean image is grey level i, its adversarial one i + 1."""
    kept, at = ex.select_examples(found, len(eps), nested=True, per_eps=ex.EXAMPLES_PER_EPS)
    if not kept:
        ex.write_task_examples(run_dir, key, attack=attack, threat=threat, eps=np.array(eps))
        return
    clean = np.stack([np.full((1, 4, 4), i / 255) for i in kept])
    ex.write_task_examples(
        run_dir, key, attack=attack, threat=threat, eps=np.array(eps),
        indices=np.array(kept), found_eps=np.array([eps[found[i]] for i in kept]),
        adversarial_at=at, images_clean=clean, images_adv=clean + 1 / 255,
        labels=np.zeros(len(kept), dtype=int), pred_clean=np.zeros(len(kept), dtype=int),
        pred_adv=np.ones(len(kept), dtype=int))


def _attacks(*names: str, chains: dict[str, tuple[str, ...]] | None = None
             ) -> list[ex.AttackExamples]:
    return [ex.AttackExamples(name=n, threat="linf", eps=EPS,
                              keys=(chains or {}).get(n, (n,))) for n in names]


def _assemble(run_dir: Path, attacks, ranked) -> dict[str, np.ndarray]:
    choices = ex.example_choices(attacks, ranked=ranked, main_eps={"linf": 8 / 255})
    path = ex.assemble(run_dir, model="m", domain="source", dataset="digits",
                       class_names=["a", "b"], class_images_key=None, choices=choices,
                       headline=choices[0] if choices[0].role == "headline" else None)
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def test_the_strip_is_the_headline_attack_at_the_headline_eps(tmp_path):
    _task(tmp_path, "fgsm", "fgsm", {0: 0, 1: 0, 2: 0})  # fooled at 2/255 only
    _task(tmp_path, "pgd", "pgd", {5: 0, 6: 1, 7: 2, 8: 2})
    out = _assemble(tmp_path, _attacks("fgsm", "pgd"), ranked=["pgd", "fgsm"])
    assert str(out["attack"]) == "pgd" and str(out["role"]) == "headline"
    assert float(out["eps"]) == pytest.approx(8 / 255)
    assert str(out["headline_attack"]) == "pgd"
    # the examples found at 8/255 first, then those from smaller balls (inside 8/255 too)
    assert out["indices"].tolist() == [7, 8, 6, 5]
    assert out["found_eps"] == pytest.approx([8 / 255, 8 / 255, 4 / 255, 2 / 255])
    assert out["example_attacks"].tolist() == ["pgd"] * 4
    assert out["images_adv"].shape == (4, 4, 4, 1)
    assert out["images_clean"][:, 0, 0, 0].tolist() == [7, 8, 6, 5]


def test_a_headline_attack_without_examples_at_its_eps_falls_back_and_says_so(tmp_path):
    _task(tmp_path, "pgd", "pgd", {})  # the headline attack kept nothing
    _task(tmp_path, "fgsm", "fgsm", {3: 1})
    out = _assemble(tmp_path, _attacks("fgsm", "pgd"), ranked=["pgd", "fgsm"])
    assert (str(out["attack"]), str(out["role"])) == ("fgsm", "fallback")
    assert float(out["eps"]) == pytest.approx(8 / 255)  # the headline eps still
    assert str(out["headline_attack"]) == "pgd"
    assert float(out["headline_eps"]) == pytest.approx(8 / 255)
    # nothing at the headline eps at all: the headline attack at the nearest other eps
    wide = (2 / 255, 8 / 255, 16 / 255)
    _task(tmp_path, "fgsm", "fgsm", {})
    _task(tmp_path, "pgd", "pgd", {4: 2}, eps=wide)  # fooled at 16/255 only
    attacks = [ex.AttackExamples("pgd", "linf", wide, ("pgd",)), *_attacks("fgsm")]
    choices = ex.example_choices(attacks, ranked=["pgd"], main_eps={"linf": 8 / 255})
    assert [(c.attack, round(c.eps * 255), c.role) for c in choices] == [
        ("pgd", 8, "headline"), ("fgsm", 8, "fallback"), ("pgd", 16, "fallback"),
        ("pgd", 2, "fallback"), ("fgsm", 4, "fallback"), ("fgsm", 2, "fallback")]
    out = _assemble(tmp_path, attacks, ranked=["pgd"])
    assert (str(out["attack"]), str(out["role"])) == ("pgd", "fallback")
    assert float(out["eps"]) == pytest.approx(16 / 255)
    # an example found at 2/255 is inside the 8/255 ball: no fallback needed
    _task(tmp_path, "pgd", "pgd", {4: 0}, eps=wide)
    out = _assemble(tmp_path, attacks, ranked=["pgd"])
    assert (str(out["attack"]), str(out["role"])) == ("pgd", "headline")
    assert out["found_eps"] == pytest.approx([2 / 255])
    # no example anywhere: the file has no strip, but still the class names
    _task(tmp_path, "pgd", "pgd", {})
    out = _assemble(tmp_path, _attacks("fgsm", "pgd"), ranked=["pgd"])
    assert "images_adv" not in out and "role" not in out and out["class_names"].size == 2


def test_a_preset_member_shows_the_examples_of_the_members_before_it(tmp_path):
    # autoattack/apgd-t ran on what apgd-ce left: its row counts both, and so does its strip
    _task(tmp_path, "ce", "autoattack/apgd-ce", {1: 2, 2: 2})
    _task(tmp_path, "t", "autoattack/apgd-t", {9: 2})
    attacks = _attacks("autoattack/apgd-ce", "autoattack/apgd-t",
                       chains={"autoattack/apgd-ce": ("ce",),
                               "autoattack/apgd-t": ("t", "ce")})
    out = _assemble(tmp_path, attacks, ranked=["autoattack/apgd-t", "autoattack/apgd-ce"])
    assert str(out["attack"]) == "autoattack/apgd-t" and str(out["role"]) == "headline"
    assert out["indices"].tolist() == [9, 1, 2]
    assert out["example_attacks"].tolist() == ["autoattack/apgd-t", "autoattack/apgd-ce",
                                               "autoattack/apgd-ce"]


def test_a_task_file_from_before_the_eps_grid_counts_at_its_one_eps(tmp_path):
    clean = np.zeros((2, 1, 4, 4))
    ex.write_task_examples(tmp_path, "old", attack="pgd", threat="linf", eps=8 / 255,
                           images_clean=clean, images_adv=clean + 8 / 255,
                           labels=np.zeros(2, dtype=int), pred_clean=np.zeros(2, dtype=int),
                           pred_adv=np.ones(2, dtype=int))
    out = _assemble(tmp_path, [ex.AttackExamples("pgd", "linf", EPS, ("old",))],
                    ranked=["pgd"])
    assert str(out["role"]) == "headline" and len(out["images_adv"]) == 2
    assert out["found_eps"] == pytest.approx([8 / 255, 8 / 255])


# --------------------------------------------------------------------------- the report


def _strip_titles(page: str) -> list[str]:
    return [re.sub(r"<[^>]+>", " ", t).split() for t in
            re.findall(r'<div class="strip-title">(.*?)</div>', page, re.S)]


def test_the_report_labels_the_headline_strip_and_a_fallback(tmp_path, build_results,
                                                              examples, context):
    results = build_results()
    files = examples(tmp_path / "examples", results)
    for index, path in enumerate(files[:2]):
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        k = len(arrays["labels"])
        arrays.update(headline_attack=np.array("pgd"), headline_threat=np.array("linf"),
                      headline_eps=np.array(8 / 255),
                      found_eps=np.array([8 / 255] * (k - 1) + [2 / 255]),
                      example_attacks=np.array(["pgd"] * k))
        if index == 0:
            arrays.update(role=np.array("headline"))
        else:  # pgd kept nothing at 8/255: fgsm at 8/255 stands in
            arrays.update(role=np.array("fallback"), attack=np.array("fgsm"),
                          example_attacks=np.array(["fgsm"] * k))
        np.savez_compressed(path, **arrays)
    page = HtmlReporter().render(results, {**context(tmp_path), "examples_dir":
                                           tmp_path / "examples"})
    titles = _strip_titles(page)
    assert len(titles) == len(files)
    assert titles.count(["pgd", "at", "8/255", "headline", "attack"]) == 1
    assert titles.count(["fgsm", "at", "8/255", "fallback"]) == 1
    assert "the attack behind the headline: of the attacks at linf 8/255, it fooled the most" \
        in page
    assert "shown because the headline attack, pgd at 8/255, kept no adversarial example" \
        in page
    assert page.count("found at 2/255") == 2  # the one example from a smaller ball, twice
    # the change row: the local mean, each image's own scale under it
    assert page.count("change, 3×3 mean") == len(files)
    assert re.search(r"±\d[\d.]*/255", page)
    # files from before the choice: no tag, and a caption that says so
    assert titles.count(["pgd", "at", "8/255"]) == len(files) - 2
    assert "the file does not say how it was chosen" in page


@pytest.mark.slow
def test_a_real_grid_shows_the_headline_attack_at_the_headline_eps(tmp_path):
    results = robench.run_grid({
        "name": "strips", "dataset": "digits", "target": "none",
        "backbones": ["digits-cnn"], "heads": ["linear"], "adaptors": ["none"],
        "attacks": ["fgsm", "pgd"], "eps": {"linf": ["2/255", "4/255", "8/255"]},
        "limit": 60, "epochs": 1, "reporters": ["html"], "attack": {"pgd": {"steps": 3}},
        "out": str(tmp_path)})
    run_dir = tmp_path / "strips"
    ranking = headline_attacks(results)
    best = ranking[ranking["rank"] == 1].iloc[0]
    (path,) = (run_dir / "examples").glob("*.npz")
    with np.load(path, allow_pickle=False) as data:
        out = {name: data[name] for name in data.files}
    assert str(out["attack"]) == best["attack"] and str(out["role"]) == "headline"
    assert float(out["eps"]) == pytest.approx(8 / 255)
    assert 1 <= len(out["images_adv"]) <= 8
    assert (out["found_eps"] <= 8 / 255 + 1e-12).all()
    change = np.abs(out["images_adv"].astype(int) - out["images_clean"].astype(int))
    assert change.max() <= 8 + 1  # inside the 8/255 ball (uint8 rounding)
    assert (out["pred_adv"] != out["labels"]).all()
    assert (out["pred_clean"] == out["labels"]).all()
    # every task file keeps a few examples per eps, each inside the balls it claims
    for task in (run_dir / "examples" / "tasks").glob("*.npz"):
        with np.load(task, allow_pickle=False) as data:
            if "adversarial_at" not in data.files:
                continue
            at, found, eps = data["adversarial_at"], data["found_eps"], data["eps"]
            assert len(at) <= ex.EXAMPLES_PER_EPS * len(eps)
            assert (at == (found[:, None] <= eps[None, :] + 1e-12)).all()
    page = (run_dir / "leaderboard.html").read_text()
    assert _strip_titles(page)[0] == [best["attack"], "at", "8/255", "headline", "attack"]
    assert not math.isnan(float(out["headline_eps"]))
    assert isinstance(results, pd.DataFrame)
