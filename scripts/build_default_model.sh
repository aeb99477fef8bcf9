#!/usr/bin/env bash
# Builds the embedded default model (dalle/assets/default) from scratch with the
# project's own commands: data -> caption tokenizer -> image tokenizer -> token shards ->
# transformer. These are the exact steps (and order) that produced the shipped model; see
# dalle/assets/default/MODEL_CARD.md for the hardware and times.
# Usage: scripts/build_default_model.sh [WORK_DIR]   (default: ~/.cache/dalle-runs/v2)
set -euo pipefail
W=${1:-$HOME/.cache/dalle-runs/v2}
D=$W/data
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # one thread per process: no thrashing on a shared CPU
mkdir -p "$W" "$D"

# 1. data (64 px): 40k signs (open vocabulary; the held-out words never drawn), 30k scenes, the
#    installed emoji sets; held-out and validation sets
[ -d "$D/heldout_signs" ] || dalle data signs "$D/heldout_signs" -n 500 --seed 102 --split heldout
[ -d "$D/heldout_scenes" ] || dalle data scenes "$D/heldout_scenes" -n 500 --seed 101 --split heldout
[ -d "$D/val_scenes" ] || dalle data scenes "$D/val_scenes" -n 500 --seed 103
[ -d "$D/val_signs" ] || dalle data signs "$D/val_signs" -n 500 --seed 104
[ -d "$D/signs" ] || dalle data signs "$D/signs" -n 40000 --resolution 64 --seed 2
[ -d "$D/scenes" ] || dalle data scenes "$D/scenes" -n 30000 --resolution 64 --seed 1
[ -d "$D/emoji" ] || dalle data emoji "$D/emoji" --resolution 64
ALL="$D/scenes $D/signs $D/emoji/train"

# 2. caption tokenizer: byte-level BPE with the spelling tokens (sign words reach the model letter by letter)
dalle tokenizer train $ALL --preset small --out "$W/tokenizer.json"

# 3. image tokenizer: PatchVQ. The 8192-code k-means codebook of 4x4 patches of 2,500 scenes,
#    2,000 signs and 500 emoji fixes the codes; the context decoder then trains on top of it
#    (its codes never change), and its reconstructions are checked on the held-out sets.
dalle vqvae codebook "$D/scenes" "$D/signs" "$D/emoji/train" --images 2500 2000 500 --preset small \
  --out "$W/codebook8192"
dalle vqvae train $ALL --preset small --init-from "$W/codebook8192" --out "$W/vqvae"
dalle vqvae eval "$D/val_scenes" "$D/heldout_scenes" "$D/val_signs" "$D/heldout_signs" "$D/emoji/val" \
  --vqvae "$W/vqvae/export" --out "$W/vqvae/eval" --device cpu

# 4. token shards (84,286 training samples) and held-out token shards for the learning curve
dalle tokens "$D/signs" --preset small --vqvae "$W/codebook8192" --out "$D/tokens/signs" --shard-size 5000 --device cpu
dalle tokens "$D/scenes" "$D/emoji/train" --preset small --vqvae "$W/codebook8192" --out "$D/tokens/other" \
  --shard-size 5000 --device cpu
dalle tokens "$D/val_scenes" "$D/val_signs" --preset small --vqvae "$W/codebook8192" --out "$D/val_tokens" \
  --shard-size 250 --device cpu

# 5. transformer: bf16 autocast where the CPU multiplies bfloat16 natively (2x fp32 with AVX-512 BF16),
#    fp32 elsewhere (emulated bf16 ran 25x slower than fp32 on an AVX2 core); held-out loss every 200
#    steps; the inference bundle with the trained image decoder
PRECISION=$(python -c "from train.trainer import cpu_has_bf16; print('bf16-mixed' if cpu_has_bf16() else '32')")
dalle train --preset small --tokens "$D"/tokens/*/*.tar --val-tokens "$D"/val_tokens/*.tar \
  --tokenizer "$W/tokenizer.json" --vqvae "$W/vqvae/export" --out "$W/dalle" \
  --set dalle_train.precision="$PRECISION" --set dalle_train.val_every=200 --set dalle_train.image_every=800
echo "bundle: $W/dalle/bundle (copy it to dalle/assets/default to ship it)"
