#!/usr/bin/env bash
# Builds the GIMP 3 test root (Debian trixie: gimp, python3-gi, gir1.2-gimp-3.0) with mmdebstrap,
# once; later runs reuse it. Needs root (CI runs as root). Usage: setup-root.sh ROOT
set -euo pipefail
root=${1:?usage: setup-root.sh ROOT}
if [ -x "$root/usr/bin/gimp-console-3.0" ]; then
  exit 0
fi
if ! command -v mmdebstrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
fi
mkdir -p "$(dirname "$root")"
rm -rf "$root.part"
mmdebstrap --quiet --variant=apt --include=gimp,python3,python3-gi,gir1.2-gimp-3.0 trixie "$root.part"
mv "$root.part" "$root"
echo "GIMP test root ready: $root"
