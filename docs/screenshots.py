"""Make docs/dashboard-overview.png and docs/dashboard-metric.png, the README's pictures of `harness
dashboard`: eight synthetic nights (tests/runs.py: gguf-cpu's decode 30% slower from the sixth night on,
torch upgraded on the fourth), the site built, the overview and the decode_tok_s page shot in headless
Chromium (tests/browser.py) and shrunk to a small palette PNG.

    python docs/screenshots.py
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "tests"))

from browser import chromium, missing  # noqa: E402
from runs import dashboard_nights  # noqa: E402

from harness.cli import main as harness  # noqa: E402

SHOTS = {"dashboard-overview.png": "index.html", "dashboard-metric.png": "metrics/decode_tok_s.html"}


def main() -> None:
    reason = missing()
    if reason:
        sys.exit(f"no browser: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dashboard_nights(root / "nightly", n=8, step_at=5)
        assert harness(["dashboard", str(root / "nightly"), "--out", str(root / "site")]) == 0
        with chromium(1200, 860) as driver:
            for name, page in SHOTS.items():
                driver.get((root / "site" / page).as_uri())
                time.sleep(2)  # plotly draws after the page has loaded
                image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
                image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(DOCS / name, optimize=True)
                print(f"{DOCS / name}: {(DOCS / name).stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
