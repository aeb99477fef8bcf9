#!/usr/bin/env bash
# The README's pictures of the default model: real outputs of the commands shown there, on the CPU.
# Usage: scripts/readme_images.sh   (from the checkout; rewrites docs/images/{generate,scenes,signs,edit})
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cd "$(dirname "$0")/.."
for d in generate scenes signs edit; do rm -rf "docs/images/$d"; done
dalle generate "a storefront that says OpenAI" --scale 3 -q --out docs/images/generate
dalle generate "a red circle" "two yellow triangles" "a red square above a blue circle" \
  --candidates 16 --scale 3 -q --show-scores --out docs/images/scenes
dalle generate "a sign that says ROBOTS" "a poster that says KEDUVA" --candidates 16 --scale 3 -q --show-scores \
  --out docs/images/signs
dalle edit docs/images/edit_input.png "a red circle above a blue square" --keep-rows 8 --scale 3 -q \
  --out docs/images/edit
# the README shows the grids (each grid's PNG metadata keeps the prompts, settings and scores)
find docs/images/generate docs/images/scenes docs/images/signs docs/images/edit -name '*_[0-9][0-9][0-9].png' -delete
