"""Fixtures for the reporting tests: realistic results tables, example npz files, a browser.

The results builder mimics what the harness writes: per model and domain, fgsm and pgd rows
at every linf eps, a pgd-l2 at the l2 eps, and the per-sample ``worst-case`` rows per threat,
with accuracies that are exact fractions of ``n`` so tests can compute expectations by hand.

The browser is Debian's ``chromium`` driven through ``chromedriver``'s W3C WebDriver HTTP
API with the standard library (no selenium: its urllib3>=2 pin conflicts with torchattacks'
``requests~=2.25``).  Tests using it skip only when chromium or chromedriver is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
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
                 l2: bool = True, seed: int = 0) -> pd.DataFrame:
    """A results table as the harness writes it (coerced to the contract dtypes)."""
    rows: list[dict[str, Any]] = []
    attacks = [("fgsm", "linf", LINF_EPS, 0.8), ("pgd", "linf", LINF_EPS, 1.0)]
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


def _browser_paths() -> tuple[str, str] | None:
    driver = shutil.which("chromedriver")
    browser = None
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.access(candidate, os.X_OK):
            browser = candidate
            break
    if driver is None or browser is None:
        return None
    return browser, driver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


ELEMENT_KEY = "element-6066-11e4-a52e-4f735466cecf"  # W3C WebDriver element reference

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


class Browser:
    """A headless chromium session over chromedriver's W3C WebDriver HTTP API."""

    def __init__(self, port: int, session: str) -> None:
        self.base = f"http://127.0.0.1:{port}/session/{session}"
        self._capturing = False

    @staticmethod
    def request(url: str, method: str = "GET", payload: Any = None, timeout: float = 60) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return json.loads(response.read() or b"{}").get("value")
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            raise AssertionError(f"WebDriver {method} {url} failed: {exc.code} {body}") from exc

    def call(self, method: str, path: str, payload: Any = None) -> Any:
        return self.request(self.base + path, method, payload)

    def open(self, url: str) -> None:
        """Navigate; error capture is installed once and runs before every page's scripts."""
        if not self._capturing:
            self.call("POST", "/goog/cdp/execute", {
                "cmd": "Page.addScriptToEvaluateOnNewDocument",
                "params": {"source": CAPTURE_ERRORS_JS},
            })
            self._capturing = True
        self.call("POST", "/url", {"url": url})

    def js(self, script: str, *args: Any) -> Any:
        return self.call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str) -> str:
        found = self.call("POST", "/element", {"using": "css selector", "value": css})
        assert isinstance(found, dict) and ELEMENT_KEY in found, f"{css}: {found}"
        return found[ELEMENT_KEY]

    def click(self, element: str) -> None:
        self.call("POST", f"/element/{element}/click", {})

    def type(self, element: str, text: str) -> None:
        self.call("POST", f"/element/{element}/value", {"text": text})

    def console_errors(self) -> list[str]:
        """SEVERE browser-log entries (script errors, failed loads, CSP refusals)."""
        entries = self.call("POST", "/se/log", {"type": "browser"}) or []
        return [e.get("message", "") for e in entries if e.get("level") == "SEVERE"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    paths = _browser_paths()
    if paths is None:
        pytest.skip("chromium and chromedriver are not installed "
                    "(apt-get install -y chromium chromium-driver)")
    binary, driver = paths
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="robench-chromium-")
    process = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    session = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if Browser.request(f"http://127.0.0.1:{port}/status", timeout=2)["ready"]:
                    break
            except (OSError, AssertionError, KeyError, TypeError):
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.1)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--window-size=1400,1000"]
        created = Browser.request(f"http://127.0.0.1:{port}/session", "POST", {
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": binary, "args": args},
                "goog:loggingPrefs": {"browser": "ALL"},
            }}}, timeout=120)
        session = created["sessionId"]
        yield Browser(port, session)
    finally:
        if session is not None:
            try:
                Browser.request(f"http://127.0.0.1:{port}/session/{session}", "DELETE",
                                timeout=20)
            except (OSError, AssertionError):
                pass
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


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
