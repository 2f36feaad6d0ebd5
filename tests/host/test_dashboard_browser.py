"""The live dashboard in a real headless browser (Debian's chromium driven by Selenium)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from sutazai_hwopt.host import HostClient, connect
from sutazai_hwopt.host.agent_threads import report_path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (bootstrap.sh --test)")


def test_dashboard_renders_live_data_without_console_errors(runtime_dir: Path, tmp_path: Path, daemon_ns: str,
                                                            sleepers: list[subprocess.Popen[bytes]]) -> None:
    """The page loads with no console error, every chart draws, and the agent table fills from live data."""
    run = subprocess.run([sys.executable, "-m", "sutazai_hwopt", "deploy", "--namespace", daemon_ns],
                         capture_output=True, text=True,
                         timeout=120, env=os.environ.copy())
    assert run.returncode == 0, run.stderr
    connect("agent_dash", {"cpu_cores": 1, "priority": 5}, pid=sleepers[0].pid, runtime_dir=runtime_dir)
    client = HostClient(runtime_dir)
    client.request("PUT", report_path("agent_dash"), {"prefetch": [
        {"cache": "ns1", "mode": "auto", "state": "trial", "reason_code": "pattern",
         "reason": "pattern: sketch repeat rate 0.60 >= 0.3", "precision": 0.0, "coverage": 0.0, "prefetched": 4,
         "used": 3, "requests": 5000, "switches": 1}]})
    url = client.url + "/"

    options = Options()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1800", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)   # the profile in tmp_path, not a /tmp/org.chromium.Chromium.* left behind
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(url)
        deadline = time.monotonic() + 60  # bounded poll: the page refreshes every 2 s
        renders = 0
        while time.monotonic() < deadline:
            renders = int(driver.execute_script("return Number(document.body.dataset.renders || 0)"))
            if renders >= 2:
                break
            time.sleep(0.2)
        assert renders >= 2, "the dashboard did not refresh from live data"
        for chart in ("chart-host", "chart-psi", "chart-io", "chart-agents", "chart-cache", "chart-pools"):
            assert driver.execute_script(f"return document.querySelectorAll('#{chart} .main-svg').length") > 0, chart
        rows = driver.execute_script("return [...document.querySelectorAll('#agents tbody tr td:first-child')]"
                                     ".map(td => td.textContent)")
        assert "agent_dash" in rows
        prefetch = driver.execute_script("return [...document.querySelectorAll('#prefetch tbody tr')]"
                                         ".map(tr => [...tr.children].map(td => td.textContent))")
        assert prefetch == [["agent_dash", "ns1", "probing", "0.0 %", "0.0 %", "3 / 4",
                             "pattern: sketch repeat rate 0.60 >= 0.3"]], prefetch
        effect = driver.execute_script("return [...document.querySelectorAll('#effectiveness tbody tr')]"
                                       ".map(tr => [...tr.children].map(td => td.textContent))")
        assert len(effect) >= 7 and any(r[0].startswith("memory in use") and "MiB" in r[1] for r in effect), effect
        points = driver.execute_script("return document.getElementById('chart-host').data[0].x.length")
        assert points >= 1
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert errors == [], errors
    finally:
        driver.quit()
