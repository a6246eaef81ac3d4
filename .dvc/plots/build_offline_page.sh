#!/usr/bin/env bash
# Rebuild .dvc/plots/offline.html: DVC's default plots page with the vega, vega-lite and
# vega-embed builds inlined, so `dvc plots show` / `dvc plots diff` render with no network.
# Needs npm (the packages are fetched once into a temp folder). Run from the repo root.
set -euo pipefail
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm init -y >/dev/null && npm install --no-audit --no-fund vega@5 vega-lite@5 vega-embed@6 >/dev/null)
python3 - "$tmp/node_modules" .dvc/plots/offline.html <<'EOF'
import json
import sys
from pathlib import Path

modules, dest = Path(sys.argv[1]), Path(sys.argv[2])
parts = []
for pkg in ("vega", "vega-lite", "vega-embed"):
    version = json.loads((modules / pkg / "package.json").read_text())["version"]
    parts.append((pkg, version, (modules / pkg / "build" / f"{pkg}.min.js").read_text()))
built = "\n".join(f"  {p}@{v}: build/{p}.min.js" for p, v, _ in parts)
scripts = "\n".join(f"<script>/* {p} {v}, BSD-3-Clause, https://github.com/vega/{p} */\n{js}\n"
                    f"</script>" for p, v, js in parts)
dest.write_text(f"""<!DOCTYPE html>
<!--
DVC plots page that renders with no network: `dvc plots show` / `dvc plots diff` use it through
.dvc/config (plots.html_template). It is DVC's default page with the vega, vega-lite and
vega-embed builds inlined instead of loaded from a CDN (DVC's scripts placeholder is left out).
Built from the npm packages:
{built}
Rebuild with .dvc/plots/build_offline_page.sh.
-->
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
""")
print(f"wrote {dest} ({dest.stat().st_size} bytes)")
EOF
