"""Screenshot a rendered chsnn report with headless Chromium.

    python scripts/screenshot_report.py RUN_DIR/report/index.html [--out report.png]

Finds ``chromium``, ``chromium-browser`` or ``google-chrome`` on PATH; without
one it says so and exits 0 (a skip). Otherwise it renders the page offline in a
fresh profile, and checks that the PNG exists and is not blank. Exit status 1
when the screenshot failed or came out blank.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
NO_BROWSER = "no Chromium found; install Debian's chromium package"


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def is_blank(png: Path) -> bool:
    """True when every pixel of the image has the same colour."""
    import matplotlib.image as mpimg

    img = mpimg.imread(str(png))
    flat = img.reshape(-1, img.shape[-1]) if img.ndim == 3 else img.reshape(-1, 1)
    return bool((flat == flat[0]).all())


def screenshot(html: Path, out: Path, browser: str, timeout: float = 120.0) -> None:
    html, out = Path(html).resolve(), Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()
    with tempfile.TemporaryDirectory(prefix="chsnn-chromium-") as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1280,4000",
            f"--screenshot={out}",
            html.as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"{browser} wrote no screenshot (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report_html", help="the report page, e.g. RUN_DIR/report/index.html")
    p.add_argument("--out", help="PNG to write (default: beside the page, screenshot.png)")
    args = p.parse_args(argv)
    html = Path(args.report_html)
    if not html.is_file():
        print(f"{html}: no such file", file=sys.stderr)
        return 1
    browser = find_browser()
    if browser is None:
        print(NO_BROWSER)
        return 0
    out = Path(args.out) if args.out else html.with_name("screenshot.png")
    try:
        screenshot(html, out, browser)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"screenshot failed: {exc}", file=sys.stderr)
        return 1
    if is_blank(out):
        print(f"{out}: the screenshot is blank", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
