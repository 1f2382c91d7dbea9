"""Entry point of the built-in reports plugin: registers ``csv``, ``md``, ``json``, ``html``.

Registered through the ``robench`` entry-point group exactly like a third-party plugin, so a
user can replace a reporter by disabling this plugin (``ROBENCH_DISABLE_PLUGINS=reports``)
and registering their own under the same name.
"""

from __future__ import annotations

from collections.abc import Iterable

import robench
from robench_reports.html_report import HtmlReporter
from robench_reports.text import CsvReporter, JsonReporter, MarkdownReporter


@robench.hookimpl
def robench_register_reporters() -> Iterable[robench.ReporterSpec]:
    return [
        robench.ReporterSpec(
            name="csv", factory=CsvReporter, files=("leaderboard.csv",),
            description="leaderboard.csv: one row per model and domain, best first, every "
                        "leaderboard column",
        ),
        robench.ReporterSpec(
            name="md", factory=MarkdownReporter, files=("leaderboard.md",),
            description="leaderboard.md: the ranking as Markdown tables with the headline "
                        "metric explained",
        ),
        robench.ReporterSpec(
            name="json", factory=JsonReporter, files=("results.json", "leaderboard.json"),
            description="results.json and leaderboard.json: the tables with run provenance",
        ),
        robench.ReporterSpec(
            name="html", factory=HtmlReporter, files=("leaderboard.html",),
            description="leaderboard.html: one offline page with a sortable table, curves, "
                        "heatmap and adversarial examples",
        ),
    ]
