"""Write an HTML template that lets `dvc plots show` render without internet access.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so on an offline or
air-gapped machine the charts stay blank. This template inlines the copies that
`npm ci` installed (versions pinned in package.json / package-lock.json) and leaves out
DVC's `{scripts}` placeholder, so the CDN tags are never added. scripts/setup.sh runs it
and points `plots.html_template` at the result in .dvc/config.local (machine-local).

    python scripts/offline_plots_template.py [--node-modules DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = (
    "vega/build/vega.min.js",
    "vega-lite/build/vega-lite.min.js",
    "vega-embed/build/vega-embed.min.js",
)
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC plots</title>
    <!-- vega, vega-lite, vega-embed inlined from node_modules: no network needed -->
    __LIBRARIES__
    <style>
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def build_template(node_modules: Path) -> str:
    scripts = []
    for library in LIBRARIES:
        path = node_modules / library
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `npm ci` in the project root")
        code = path.read_text(encoding="utf-8")
        if "</script" in code:  # would end the inline <script> early
            raise ValueError(f"{path} contains '</script' and cannot be inlined")
        scripts.append(f"<script>/* {library} */\n{code}\n</script>")
    return PAGE.replace("__LIBRARIES__", "\n    ".join(scripts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node-modules", type=Path, default=ROOT / "node_modules")
    parser.add_argument("--out", type=Path, default=ROOT / ".dvc/tmp/plots_offline.html")
    args = parser.parse_args(argv)
    try:
        html = build_template(args.node_modules)
    except (FileNotFoundError, ValueError) as error:
        print(f"offline_plots_template: {error}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(args.out)
    print(f"offline_plots_template: wrote {args.out} ({len(html) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
