"""Open the report in headless Debian chromium: plots render with data, no console errors.

CI installs chromium (``apt-get install -y chromium``); without it this test is skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import optuna
import pytest

from autoslim.outputs.report import write_report
from autoslim.testing.studies import make_study_file

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)

# Injected first into a copy of the page: records uncaught errors, rejected promises and
# console.error calls into an element that --dump-dom shows.
ERROR_PROBE = """<script>
(function () {
  var seen = [];
  function record(message) {
    seen.push(String(message));
    var el = document.getElementById("console-errors");
    if (!el) {
      el = document.createElement("pre");
      el.id = "console-errors";
      document.documentElement.appendChild(el);
    }
    el.textContent = JSON.stringify(seen);
  }
  window.addEventListener("error", function (e) { record(e.message); });
  window.addEventListener("unhandledrejection", function (e) { record(e.reason); });
  var original = console.error;
  console.error = function () {
    record(Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
})();
</script>"""


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-unsafe-swiftshader",  # software WebGL for the 3D and parallel plots
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--virtual-time-budget=15000",
            "--window-size=1400,4400",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: apt-get install chromium")
def test_report_renders_in_headless_chromium(tmp_path):
    url = make_study_file(tmp_path)
    page = write_report(optuna.load_study(study_name="demo", storage=url), tmp_path / "r.html")
    probe = tmp_path / "probe.html"
    probe.write_text(
        page.read_text(encoding="utf-8").replace("<head>", "<head>" + ERROR_PROBE, 1),
        encoding="utf-8",
    )

    proc = chromium(tmp_path, "--dump-dom", probe.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    errors = re.search(r'<pre id="console-errors">(.*?)</pre>', dom, re.S)
    assert errors is None, f"console errors: {json.loads(errors.group(1)) if errors else ''}"

    # Nine figures: three pair fronts, 3D front, parallel coordinates, importances, and
    # Optuna's history of each of the three objectives.
    assert len(re.findall(r'class="plot-container plotly"', dom)) == 9
    # SVG markers: 2D fronts (7 trials + base, three plots), histories (7 trials, three plots).
    assert len(re.findall(r'<path class="point"', dom)) >= 3 * 8
    assert len(re.findall(r'<g class="trace bars"', dom)) == 3  # importances per objective
    assert len(re.findall(r'class="gl-container"', dom)) >= 2  # 3D scene and parallel coords
    assert len(re.findall(r"<canvas", dom)) >= 2
    assert dom.count("<tr") >= 10 + 1  # one table row per trial, plus the header
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom

    shot = tmp_path / "report.png"
    proc = chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.stat().st_size > 50_000  # a page of plots, not a blank screen


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: apt-get install chromium")
def test_error_probe_catches_console_errors(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        f"<html><head>{ERROR_PROBE}</head><body><script>console.error('boom');"
        "undefined_function();</script></body></html>"
    )
    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    found = re.search(r'<pre id="console-errors">(.*?)</pre>', dom, re.S)
    assert found is not None
    assert json.loads(found.group(1))[0] == "boom"
    assert "undefined_function" in json.loads(found.group(1))[1]
