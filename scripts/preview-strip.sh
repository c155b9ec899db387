#!/usr/bin/env bash
# A strip of the previews of one real run, for the README: `neural-style run --preview` writes
# the image as it forms; this copies that file every half second, then joins a few frames and the
# result side by side (the venv's Pillow). Usage: scripts/preview-strip.sh [OUT.png]
# CONTENT, STYLE, WEIGHTS, SIZE, EVALS override the defaults below.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/neural-style}
OUT=${1:-docs/preview-strip.png}
CONTENT=${CONTENT:-../shared/images/tubingen.jpg}
STYLE=${STYLE:-../shared/images/starry_night.jpg}
SIZE=${SIZE:-256}
EVALS=${EVALS:-150}
PY=${PY:-.venv/bin/python}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
W=${WEIGHTS:-}
if [ -z "$W" ]; then W="$TMP/w.safetensors"; "$BIN" weights random --seed 0 --out "$W" >/dev/null; fi
"$BIN" run --local -c "$CONTENT" -s "$STYLE" -o "$TMP/final.png" --weights "$W" --size "$SIZE" \
    --iterations "$EVALS" --preview "$TMP/now.png" --preview-every 0.5 --json >"$TMP/summary.json" 2>"$TMP/log" &
RUN=$!
start=$(date +%s.%N)
i=0
while kill -0 "$RUN" 2>/dev/null; do
    if [ -f "$TMP/now.png" ]; then
        t=$(echo "$(date +%s.%N) - $start" | bc)
        cp "$TMP/now.png" "$TMP/frame-$(printf %03d $i)-$t.png"
        i=$((i + 1))
    fi
    sleep 0.5
done
wait "$RUN"
"$PY" - "$TMP" "$OUT" <<'PY'
import glob, json, os, sys
from PIL import Image, ImageDraw
tmp, out = sys.argv[1], sys.argv[2]
frames = sorted(glob.glob(os.path.join(tmp, "frame-*.png")))
s = json.load(open(os.path.join(tmp, "summary.json")))
pick = [frames[round(k * (len(frames) - 1) / 4)] for k in range(5)] if len(frames) >= 5 else frames
# seconds since the command started (model load included)
images = [(Image.open(p).convert("RGB"), "%.1f s" % float(p.rsplit("-", 1)[1][:-4])) for p in pick]
images.append((Image.open(os.path.join(tmp, "final.png")).convert("RGB"), "result"))
w, h = images[0][0].size
strip = Image.new("RGB", (len(images) * (w + 8) - 8, h + 22), "white")
draw = ImageDraw.Draw(strip)
for i, (im, label) in enumerate(images):
    strip.paste(im.resize((w, h)), (i * (w + 8), 22))
    draw.text((i * (w + 8) + 4, 4), label, fill="black")
strip.save(out)
print(f"{out}: {len(frames)} previews over {s['seconds']:.1f} s, {s['evaluations']} evaluations, "
      f"{s['precision']}, pretrained={s['pretrained']}")
PY
