"""TensorBoard's scalars dashboard as a person sees it: the venv's `tensorboard` on a run's log folder,
loaded by headless Chromium, saved as a PNG for the docs.

    python -m bench.tensorboard_screenshot LOG_DIR OUT.png [--tags REGEX] [--chromium chromium] [--size 1600,1100]

Needs Debian's `chromium` package (apt-get install chromium). A bench script rather than a test: the
CI image has no browser, and what a screenshot shows is for a person to judge; the test suite reads
the same server's scalars over HTTP (tests/test_tensorboard.py).
"""

import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

from bench import command
from bench.tensorboard_http import serving

QUIET = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--hide-scrollbars"]
"""A browser that talks to nothing but the local server: no sandbox (it runs as root in the container), no GPU,
no update or sync traffic."""


def screenshot(log_dir: Path, out: Path, tags: str, chromium: str, size: str) -> None:
    binary = Path(sys.executable).parent / "tensorboard"
    runs = {str(events.parent.relative_to(log_dir)) for events in log_dir.rglob("events.out.tfevents.*")}
    # The scalars dashboard (its curves are SVG, drawn without a GPU), the tags filtered, curves unsmoothed and
    # whole: the dashboard's own URL settings.
    page = "#scalars&" + urllib.parse.urlencode({"tagFilter": tags, "_smoothingWeight": 0, "_ignoreYOutliers": "false"})
    with tempfile.TemporaryDirectory() as scratch:
        command = [str(binary), "--logdir", str(log_dir), "--host", "127.0.0.1", "--port", "0"]
        with serving(command, Path(scratch), Path(scratch) / "tensorboard.log", runs) as served:
            # A script-drawn page: a virtual-time budget lets it fetch the scalars and draw them before the shot.
            subprocess.run([chromium, *QUIET, f"--user-data-dir={scratch}/profile", f"--window-size={size}",
                            "--virtual-time-budget=20000", f"--screenshot={out.resolve()}", served.url + page],
                           check=True, timeout=300, capture_output=True)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = command.parser("bench.tensorboard_screenshot", __doc__)
    parser.add_argument("log_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--tags", default="", help="a regular expression: only the tags it matches (default: all)")
    parser.add_argument("--chromium", default="chromium")
    parser.add_argument("--size", default="1600,1100", help="the window, WIDTH,HEIGHT in pixels")
    args = parser.parse_args(argv)
    screenshot(args.log_dir, args.out, args.tags, args.chromium, args.size)


if __name__ == "__main__":
    main()
