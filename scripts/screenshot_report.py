"""Rig a sequence, write its HTML report, and screenshot the report in headless Chromium.

    python scripts/screenshot_report.py                                  # fox run -> docs/report_screenshot.png
    python scripts/screenshot_report.py ../shared/realdata/quaternius_horse_gallop.npz --out docs/horse_report.png

Shows that the report is a self-contained page a real browser renders (plots and heatmaps inline).
Chromium is not a Python dependency: install it from your system's packages (Debian/Ubuntu:
``apt-get install chromium``) or pass ``--browser`` with the path of a Chrome/Chromium binary.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

log = logging.getLogger("screenshot_report")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser(explicit: str | None) -> str:
    """Path of a Chromium-family browser, or ``SystemExit`` with how to get one."""
    for name in ([explicit] if explicit else BROWSERS):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit(f"no Chromium found (tried {', '.join([explicit] if explicit else BROWSERS)}); "
                     f"install it (e.g. `apt-get install chromium`) or pass --browser PATH")


def screenshot(browser: str, html: Path, png: Path, width: int, height: int, timeout: float = 120.0) -> None:
    """Render ``html`` in headless Chromium and save a ``width x height`` screenshot to ``png``."""
    png.parent.mkdir(parents=True, exist_ok=True)
    cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={width},{height}", f"--screenshot={png.resolve()}", html.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not png.exists():
        raise SystemExit(f"Chromium failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", nargs="?", type=Path,
                        default=ROOT.parent / "shared" / "realdata" / "khronos_fox_run.npz")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report_screenshot.png")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--models", choices=["auto", "sprig", "base"], default="auto")
    parser.add_argument("--browser", help="Chrome/Chromium executable (default: search PATH)")
    parser.add_argument("--size", type=int, nargs=2, default=(1280, 2400), metavar=("W", "H"))
    parser.add_argument("--keep-html", type=Path, help="also keep the HTML report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from backend.io import load_sequence
    from backend.rigging.report import write_report
    from backend.rigging.pipeline import RigConfig, rig_sequence

    browser = find_browser(args.browser)
    result = rig_sequence(load_sequence(args.input),
                          RigConfig(models=args.models, checkpoint_dir=str(args.checkpoints)))
    with tempfile.TemporaryDirectory() as tmp:
        html = args.keep_html or Path(tmp) / "report.html"
        write_report(result, html)
        screenshot(browser, html, args.out, *args.size)
    log.info("%s: %d joints, recon mean %.3f%% -> %s", args.input.name, result.stats["joints"],
             100 * result.stats["recon_mean"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
