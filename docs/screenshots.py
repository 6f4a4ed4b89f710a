"""Make the documentation's pictures in headless Chromium (Debian's ``chromium``), shrunk to small palette PNGs.

- ``docs/dashboard-overview.png`` and ``docs/dashboard-metric.png``, the pictures of `harness dashboard`: eight
  synthetic nights (tests/runs.py: gguf-cpu's decode 30% slower from the sixth night on, torch upgraded on the
  fourth), the site built, the overview and the decode_tok_s page shot through selenium (tests/browser.py);
- with ``--docs``, ``docs/docs-metrics.png`` and ``docs/docs-suites.png``, two pages of this documentation: the
  site built by ``mkdocs build`` into a temporary folder and shot by ``chromium --headless --screenshot``.

    python docs/screenshots.py [--docs]
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO / "tests"))

DASHBOARD_SHOTS = {"dashboard-overview.png": "index.html", "dashboard-metric.png": "metrics/decode_tok_s.html"}
DOCS_SHOTS = {"docs-metrics.png": "metrics/index.html", "docs-suites.png": "suites/index.html"}
WIDTH, HEIGHT = 1280, 900


def save_small(png: bytes, name: str) -> None:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(DOCS / name, optimize=True)
    print(f"{DOCS / name}: {(DOCS / name).stat().st_size / 1024:.0f} KiB")


def dashboard_shots() -> None:
    from browser import chromium, missing
    from runs import dashboard_nights

    from harness.cli import main as harness

    reason = missing()
    if reason:
        sys.exit(f"no browser: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dashboard_nights(root / "nightly", n=8, step_at=5)
        assert harness(["dashboard", str(root / "nightly"), "--out", str(root / "site")]) == 0
        with chromium(1200, 860) as driver:
            for name, page in DASHBOARD_SHOTS.items():
                driver.get((root / "site" / page).as_uri())
                time.sleep(2)  # plotly draws after the page has loaded
                save_small(driver.get_screenshot_as_png(), name)


def docs_shots() -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("no browser: apt-get install chromium")
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        subprocess.run([sys.executable, "-m", "mkdocs", "build", "--config-file", str(REPO / "mkdocs.yml"),
                        "--site-dir", str(site)], cwd=REPO, check=True)
        for name, page in DOCS_SHOTS.items():
            shot = Path(tmp) / name
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            "--disable-background-networking", "--no-first-run", f"--user-data-dir={tmp}/profile",
                            f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}", (site / page).as_uri()],
                           check=True, capture_output=True)
            save_small(shot.read_bytes(), name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", action="store_true", help="shoot two pages of the documentation instead")
    args = parser.parse_args()
    docs_shots() if args.docs else dashboard_shots()


if __name__ == "__main__":
    main()
