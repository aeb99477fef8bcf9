#!/usr/bin/env bash
# Builds the embedded default model (dalle/assets/default) from scratch with the
# project's own commands: data -> tokenizer -> dVAE -> token shards -> transformer.
# Usage: scripts/build_default_model.sh [WORK_DIR]   (default: runs/default)
# Step counts come from configs/small.yaml; override with VQVAE_STEPS / DALLE_STEPS.
set -euo pipefail
W=${1:-runs/default}
D=$W/data
N_SCENES=${N_SCENES:-30000}
N_SIGNS=${N_SIGNS:-30000}
mkdir -p "$W" "$D"

[ -d "$D/scenes" ] || dalle data scenes "$D/scenes" -n "$N_SCENES" --resolution 64 --seed 1
[ -d "$D/signs" ] || dalle data signs "$D/signs" -n "$N_SIGNS" --resolution 64 --seed 2
[ -d "$D/emoji" ] || dalle data emoji "$D/emoji" --resolution 64 || echo "no emoji sources: continuing without emoji"
[ -d "$D/heldout_scenes" ] || dalle data scenes "$D/heldout_scenes" -n 500 --resolution 64 --seed 101 --split heldout
[ -d "$D/heldout_signs" ] || dalle data signs "$D/heldout_signs" -n 500 --resolution 64 --seed 102 --split heldout

SHARDS=$(ls "$D"/scenes/*.tar "$D"/signs/*.tar "$D"/emoji/*.tar 2>/dev/null)
dalle tokenizer train $SHARDS --preset small --out "$W/tokenizer.json"
dalle vqvae train $SHARDS --preset small --out "$W/vqvae" ${VQVAE_STEPS:+--set vqvae_train.max_steps=$VQVAE_STEPS}
dalle tokens $SHARDS --preset small --vqvae "$W/vqvae/export" --out "$D/tokens"
dalle train --preset small --tokens "$D"/tokens/*.tar --tokenizer "$W/tokenizer.json" \
  --vqvae "$W/vqvae/export" --out "$W/dalle" ${DALLE_STEPS:+--set dalle_train.max_steps=$DALLE_STEPS}
echo "bundle: $W/dalle/bundle (copy to dalle/assets/default to ship it)"
