"""Fixtures for the reporting tests: realistic results tables, example npz files, a browser.

The results builder mimics what the harness writes: per model and domain, fgsm and pgd rows
at every linf eps, a pgd-l2 at the l2 eps, and the per-sample ``worst-case`` rows per threat,
with accuracies that are exact fractions of ``n`` so tests can compute expectations by hand.

The browser is Debian's ``chromium`` driven by selenium through ``chromedriver`` (Debian's
``chromium-driver``), both given by path so selenium never looks for or downloads anything.
Tests using it skip when a binary is missing, naming which one; under ``CI=true`` a missing
binary fails them instead, so CI can never pass without having run them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import robench_reports.plugin

from robench.host import PluginHost
from robench.results import coerce_results

LINF_EPS = (("2/255", 2 / 255), ("4/255", 4 / 255), ("8/255", 8 / 255), ("16/255", 16 / 255))
L2_EPS = (("0.5", 0.5), ("1", 1.0))
N = 200


@dataclass
class ModelSpec:
    """One model of a synthetic grid: its parts and accuracies per domain.

    ``clean`` maps domain to clean accuracy; ``decay`` maps domain to how fast robust
    accuracy falls with eps (0 = perfectly robust, 1 = collapses by the largest eps).
    """

    backbone: str
    head: str
    adaptor: str
    clean: dict[str, float]
    decay: dict[str, float]
    name: str | None = None

    @property
    def model(self) -> str:
        return self.name or f"{self.backbone}+{self.head}+{self.adaptor}"


DEFAULT_MODELS = (
    ModelSpec("digits-cnn", "linear", "none", {"source": 0.95, "target": 0.60},
              {"source": 0.7, "target": 0.9}),
    ModelSpec("digits-cnn", "linear", "dann", {"source": 0.93, "target": 0.75},
              {"source": 0.6, "target": 0.8}),
    ModelSpec("timm:test_resnet", "linear", "none", {"source": 0.90, "target": 0.55},
              {"source": 0.4, "target": 0.5}),
)

DATASETS = {"source": "digits", "target": "digits-m"}


def _frac(value: float) -> float:
    """Round to a whole number of the N samples, like a real measurement."""
    return round(value * N) / N


def make_results(models: Sequence[ModelSpec] = DEFAULT_MODELS, *, run: str = "unit-run",
                 domains: Sequence[str] = ("source", "target"), worst_case: bool = True,
                 l2: bool = True, seed: int = 0,
                 linf_eps: Sequence[tuple[str, float]] = LINF_EPS,
                 noise: bool = False) -> pd.DataFrame:
    """A results table as the harness writes it (coerced to the contract dtypes).

    ``noise`` adds the ``noise`` baseline (barely lowers accuracy) at the linf eps."""
    rows: list[dict[str, Any]] = []
    attacks = [("fgsm", "linf", tuple(linf_eps), 0.8), ("pgd", "linf", tuple(linf_eps), 1.0)]
    if noise:
        attacks.append(("noise", "linf", tuple(linf_eps), 0.05))
    if l2:
        attacks.append(("pgd-l2", "l2", L2_EPS, 1.0))
    for spec in models:
        for domain in domains:
            clean = spec.clean[domain]
            base = {
                "model": spec.model, "backbone": spec.backbone, "head": spec.head,
                "adaptor": spec.adaptor, "dataset": DATASETS[domain], "domain": domain,
                "clean_acc": clean, "n": N, "seed": seed, "device": "cpu",
                "params": 12345 if spec.backbone == "digits-cnn" else 67890,
                "train_seconds": 12.5, "run": run, "status": "ok", "flags": "",
            }
            worst: dict[tuple[str, str, float], float] = {}
            for attack, threat, grid, strength in attacks:
                largest = grid[-1][1]
                for label, eps in grid:
                    drop = spec.decay[domain] * strength * min(1.0, eps / largest)
                    robust = _frac(clean * (1.0 - drop))
                    key = (threat, label, eps)
                    worst[key] = min(worst.get(key, 1.0), robust)
                    rows.append({**base, "attack": attack, "threat": threat,
                                 "attack_kind": "bounded", "eps": eps, "eps_label": label,
                                 "robust_acc": robust, "n_robust": round(robust * N),
                                 "grad_evals": 10 * N, "queries": 11 * N, "seconds": 0.5,
                                 "attack_params": json.dumps({"steps": 10})})
            if worst_case:
                for (threat, label, eps), robust in worst.items():
                    robust = _frac(max(0.0, robust - 0.01))
                    rows.append({**base, "attack": "worst-case", "threat": threat,
                                 "attack_kind": "worst-case", "eps": eps, "eps_label": label,
                                 "robust_acc": robust, "n_robust": round(robust * N),
                                 "grad_evals": 0, "queries": 0, "seconds": 0.0,
                                 "attack_params": "{}"})
    return coerce_results(pd.DataFrame(rows))


@pytest.fixture
def results() -> pd.DataFrame:
    return make_results()


def write_examples(examples_dir: Path, results: pd.DataFrame, *, k: int = 6,
                   class_images: bool = True) -> list[Path]:
    """One npz per model and domain in the harness's format, built from sklearn's digits.

    The "adversarial" images are the clean ones plus +-8 grey levels of sign noise and the
    predictions are wrong on every other sample: realistic shapes, dtypes and values.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    names = np.array([f"digit {i}" for i in range(10)])
    written = []
    pairs = results[["model", "domain", "dataset"]].drop_duplicates()
    for index, (model, domain, dataset) in enumerate(pairs.itertuples(index=False)):
        pick = rng.choice(len(images), size=k, replace=False)
        clean = images[pick]
        noise = rng.choice([-8, 8], size=clean.shape)
        adv = np.clip(clean.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        pred_clean = labels[pick].copy()
        pred_adv = pred_clean.copy()
        pred_adv[::2] = (pred_adv[::2] + 1) % 10
        arrays: dict[str, Any] = {
            "model": np.array(model), "domain": np.array(domain), "dataset": np.array(dataset),
            "attack": np.array("pgd"), "threat": np.array("linf"), "eps": np.array(8 / 255),
            "images_clean": clean, "images_adv": adv, "labels": labels[pick],
            "pred_clean": pred_clean, "pred_adv": pred_adv, "class_names": names,
        }
        if class_images:
            means = np.stack([images[labels == c].mean(axis=0) for c in range(10)])
            arrays["class_images"] = np.clip(means + rng.normal(0, 20, means.shape), 0,
                                             255).astype(np.uint8)
        path = examples_dir / f"example-{index:02d}.npz"
        examples_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)
        written.append(path)
    return written


@pytest.fixture
def reports_host() -> PluginHost:
    """A host with only the reports plugin: tests never depend on other plugins' state."""
    return PluginHost.create(entry_points=False, plugins=[robench_reports.plugin])


def make_context(run_dir: Path, name: str = "unit-run") -> dict[str, Any]:
    return {
        "name": name,
        "config": {"name": name, "dataset": "digits", "target": "digits-m",
                   "attacks": ["fgsm", "pgd", "pgd-l2"], "seed": 0},
        "provenance": {"robench": "0.1.0", "torch": "2.x", "device": "cpu", "seed": 0,
                       "git_revision": "abc1234", "started": "2025-01-01T00:00:00Z",
                       "finished": "2025-01-01T00:05:00Z"},
        "examples_dir": run_dir / "examples",
    }


# --------------------------------------------------------------------------- browser

#: where Debian's chromium keeps the real browser binary (``/usr/bin/chromium`` is a wrapper)
BROWSER_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser",
                      "google-chrome")
WINDOW = (1400, 1000)

#: runs before any page script: records errors of every kind into window.__robenchErrors
CAPTURE_ERRORS_JS = """
window.__robenchErrors = [];
window.addEventListener('error', function (e) {
  var what = e.message || (e.target && (e.target.src || e.target.href)) || 'resource error';
  window.__robenchErrors.push('error: ' + what);
}, true);
window.addEventListener('unhandledrejection', function (e) {
  window.__robenchErrors.push('unhandled rejection: ' + e.reason);
});
document.addEventListener('securitypolicyviolation', function (e) {
  window.__robenchErrors.push('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI);
});
var originalError = console.error;
console.error = function () {
  window.__robenchErrors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
  return originalError.apply(console, arguments);
};
"""


def find_browser() -> str | None:
    """The chromium binary, or None."""
    for candidate in BROWSER_CANDIDATES:
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def missing_browser_parts() -> list[str]:
    """What the browser tests need and this machine lacks, each named exactly."""
    missing = []
    if find_browser() is None:
        missing.append("the chromium binary (none of /usr/lib/chromium/chromium, chromium, "
                       "chromium-browser, google-chrome; Debian package chromium)")
    if shutil.which("chromedriver") is None:
        missing.append("the chromedriver binary (not on PATH; Debian package "
                       "chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the Python package selenium (pip install -e '.[test]')")
    return missing


def _unavailable(message: str) -> None:
    """Skip, or fail under CI=true: CI must run the browser tests, never skip them."""
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless chromium (selenium WebDriver) with a 1400 x 1000 window, which records
    every page's script errors and CSP violations in ``window.__robenchErrors``."""
    missing = missing_browser_parts()
    if missing:
        _unavailable("the browser tests cannot run: missing " + " and ".join(missing)
                     + ". Install with: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="robench-chromium-")
    options = Options()
    options.binary_location = find_browser()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                     "--hide-scrollbars", f"--user-data-dir={profile}",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=shutil.which("chromedriver"))
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except WebDriverException as exc:
        shutil.rmtree(profile, ignore_errors=True)
        _unavailable(f"chromium did not start under chromedriver: {exc.msg}")
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                               {"source": CAPTURE_ERRORS_JS})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def console_errors() -> Callable[[Any], list[str]]:
    """SEVERE browser-log entries since the last call (script errors, failed loads, CSP)."""
    def read(driver: Any) -> list[str]:
        return [e.get("message", "") for e in driver.get_log("browser")
                if e.get("level") == "SEVERE"]
    return read


# Builders as fixtures, so test modules never import conftest (works in any import mode).


@pytest.fixture(scope="session")
def build_results() -> Callable[..., pd.DataFrame]:
    return make_results


@pytest.fixture(scope="session")
def model_spec() -> type[ModelSpec]:
    return ModelSpec


@pytest.fixture(scope="session")
def examples() -> Callable[..., list[Path]]:
    return write_examples


@pytest.fixture(scope="session")
def context() -> Callable[..., dict[str, Any]]:
    return make_context
