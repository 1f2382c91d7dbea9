"""Entry point of the built-in reports plugin: registers ``csv``, ``md``, ``json``, ``html``.

Registered through the ``robench`` entry-point group exactly like a third-party plugin, so a
user can replace a reporter by disabling this plugin (``ROBENCH_DISABLE_PLUGINS=reports``)
and registering their own under the same name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import robench

#: the reporter classes and the module that defines each: imported (with pandas, and
#: matplotlib for html) when a reporter is built, never when the reporters are listed
_CLASSES: dict[str, str] = {
    "CsvReporter": "robench_reports.text",
    "MarkdownReporter": "robench_reports.text",
    "JsonReporter": "robench_reports.text",
    "HtmlReporter": "robench_reports.html_report",
}


def _lazy(cls: str) -> Any:
    return robench.lazy(f"{_CLASSES[cls]}:{cls}")


#: The reporter classes under the names this module exported before it became lazy
#: (``robench_reports.plugin.HtmlReporter``), imported on first use.
__getattr__ = robench.lazy_module_getattr(__name__, _CLASSES)


@robench.hookimpl
def robench_register_reporters() -> Iterable[robench.ReporterSpec]:
    return [
        robench.ReporterSpec(
            name="csv", factory=_lazy("CsvReporter"), files=("leaderboard.csv",),
            description="leaderboard.csv: one row per model and domain, best first, every "
                        "leaderboard column",
        ),
        robench.ReporterSpec(
            name="md", factory=_lazy("MarkdownReporter"), files=("leaderboard.md",),
            description="leaderboard.md: the ranking as Markdown tables with the headline "
                        "metric explained",
        ),
        robench.ReporterSpec(
            name="json", factory=_lazy("JsonReporter"), files=("results.json", "leaderboard.json"),
            description="results.json and leaderboard.json: the tables with run provenance",
        ),
        robench.ReporterSpec(
            name="html", factory=_lazy("HtmlReporter"), files=("leaderboard.html",),
            description="leaderboard.html: one offline page with a sortable table, curves, "
                        "heatmap and adversarial examples",
        ),
    ]
