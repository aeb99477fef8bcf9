#!/usr/bin/env bash
# Builds the embedded default model (dalle/assets/default) from scratch with the
# project's own commands: data -> tokenizer -> dVAE -> token shards -> transformer.
# These are the exact steps (and order) that produced the shipped model; see
# dalle/assets/default/MODEL_CARD.md for the hardware and times.
# Usage: scripts/build_default_model.sh [WORK_DIR]   (default: runs/default)
set -euo pipefail
W=${1:-runs/default}
D=$W/data
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # one thread per process: no thrashing on a shared CPU
mkdir -p "$W" "$D"

# 1. data (64 px): 30k scenes, 30k signs ("OpenAI" held out), the installed emoji sets, held-out sets
[ -d "$D/scenes" ] || dalle data scenes "$D/scenes" -n 30000 --resolution 64 --seed 1
[ -d "$D/signs" ] || dalle data signs "$D/signs" -n 30000 --resolution 64 --seed 2
[ -d "$D/emoji" ] || dalle data emoji "$D/emoji" --resolution 64
[ -d "$D/heldout_scenes" ] || dalle data scenes "$D/heldout_scenes" -n 500 --seed 101 --split heldout
[ -d "$D/heldout_signs" ] || dalle data signs "$D/heldout_signs" -n 500 --seed 102 --split heldout
ALL="$D/scenes $D/signs $D/emoji/train"

# 2. caption BPE
dalle tokenizer train $ALL --preset small --out "$W/tokenizer.json"

# 3. dVAE: the preset's 8000 steps, then its reconstructions on the held-out sets
dalle vqvae train $ALL --preset small --out "$W/vqvae"
dalle vqvae eval "$D/heldout_scenes" "$D/heldout_signs" "$D/emoji/val" --vqvae "$W/vqvae/export" \
  --out "$W/vqvae/eval" --device cpu

# 4. token shards: 10k scenes, 10k signs and all training emoji (34,286 samples)
dalle tokens "$D"/scenes/0000{0..9}.tar "$D"/signs/0000{0..9}.tar "$D"/emoji/train/*.tar \
  --preset small --vqvae "$W/vqvae/export" --out "$D/tokens" --shard-size 5000 --device cpu

# 5. transformer (the preset's 2500 steps; bf16 autocast, 2x faster than fp32 on a CPU with
#    AVX-512 bf16) and the inference bundle
dalle train --preset small --tokens "$D"/tokens/*.tar --tokenizer "$W/tokenizer.json" \
  --vqvae "$W/vqvae/export" --out "$W/dalle" --set dalle_train.precision=bf16-mixed
echo "bundle: $W/dalle/bundle (copy it to dalle/assets/default to ship it)"
