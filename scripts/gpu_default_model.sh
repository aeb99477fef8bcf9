#!/usr/bin/env bash
# One prepared run that builds a default-model candidate on a GPU machine in about 9 minutes:
# data (in parallel on the machine's cores) -> caption tokenizer -> k-means codebook -> token shards
# (encoded on the GPU) -> the transformer for TRAIN_MINUTES -> the scorer for SCORER_MINUTES ->
# the bundle, every file of it at most 16 MiB (checked), with each step's wall time in times.txt.
#
#   scripts/gpu_default_model.sh OUT                  # on the GPU machine, from the checkout
#   SCALE=tiny scripts/gpu_default_model.sh OUT       # the same steps in a minute on a CPU (the test)
#
# No emoji: their artwork comes from npm packages that the GPU machine does not have.
# Compare the result with the shipped model: dalle eval --model OUT/candidate (on the CPU here).
set -euo pipefail
OUT=${1:?usage: scripts/gpu_default_model.sh OUT}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
D=$OUT/data
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
DALLE=${DALLE:-dalle}
JOBS=${JOBS:-$(nproc)}
if [ "${SCALE:-gpu}" = tiny ]; then      # the CPU check: the same commands at toy sizes
  PRESET=$OUT/tiny-patchvq.yaml         # the tiny preset with a PatchVQ image tokenizer
  python -c "import sys, yaml; p = yaml.safe_load(open('configs/tiny.yaml'))
p['vqvae'] = dict(kind='patch_vq', resolution=16, patch=4, vocab_size=64, n_hid=8, n_blocks=0)
yaml.safe_dump(p, sys.stdout)" > "$PRESET"
  PER_JOB=40; SIGN_JOBS=2; SCENE_JOBS=2; HELD=40; CODEBOOK_IMAGES="40 40"
  TRAIN_STEPS=6; TRAIN_MINUTES=1; BATCH=8; SCORER_STEPS=4; SCORER_MINUTES=1; DEVICE=cpu; WORKERS=0; SHARD=100
else
  PRESET=small; PER_JOB=${PER_JOB:-5000}; SIGN_JOBS=${SIGN_JOBS:-8}; SCENE_JOBS=${SCENE_JOBS:-6}; HELD=500
  CODEBOOK_IMAGES="2500 2000"; BATCH=${BATCH:-64}; DEVICE=${DEVICE:-auto}
  TRAIN_STEPS=${TRAIN_STEPS:-20000}; TRAIN_MINUTES=${TRAIN_MINUTES:-4}
  SCORER_STEPS=${SCORER_STEPS:-3000}; SCORER_MINUTES=${SCORER_MINUTES:-1}; WORKERS=${WORKERS:-4}; SHARD=2500
fi
export OMP_NUM_THREADS=1                 # one thread per data job; torch steps below set their own
T0=$(date +%s); : > "$OUT/times.txt"
mark() { echo "$1 $(( $(date +%s) - T0 )) s" | tee -a "$OUT/times.txt"; }

# 1. data: the held-out and validation sets, then the training sets in parallel jobs of PER_JOB each
pids=()
build() {   # build KIND DIR ARGS...: one data job in the background, at most JOBS at a time
  local kind=$1 dir=$2; shift 2
  [ -d "$dir" ] && return 0
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
  $DALLE data "$kind" "$dir" "$@" & pids+=($!)
}
build signs "$D/heldout_signs" -n $HELD --seed 102 --split heldout
build scenes "$D/heldout_scenes" -n $HELD --seed 101 --split heldout
build scenes "$D/val_scenes" -n $HELD --seed 103
build signs "$D/val_signs" -n $HELD --seed 104
for i in $(seq 1 $SIGN_JOBS); do build signs "$D/signs/$i" -n $PER_JOB --seed $((1000 + i)); done
for i in $(seq 1 $SCENE_JOBS); do build scenes "$D/scenes/$i" -n $PER_JOB --seed $((2000 + i)); done
for p in "${pids[@]}"; do wait "$p"; done
mark data

# 2. caption tokenizer (BPE + spelling tokens); 3. the k-means codebook (its codes are final)
export OMP_NUM_THREADS=$JOBS
$DALLE tokenizer train "$D"/signs/* "$D"/scenes/* --preset $PRESET --out "$OUT/tokenizer.json"
mark tokenizer
read -r N_SCENE N_SIGN <<< "$CODEBOOK_IMAGES"
$DALLE vqvae codebook "$D/scenes/1" "$D/signs/1" --images "$N_SCENE" "$N_SIGN" --recolour 1 2 --preset $PRESET \
  --out "$OUT/codebook"
mark codebook

# 4. token shards, encoded on the GPU
$DALLE tokens "$D"/signs/* "$D"/scenes/* --preset $PRESET --vqvae "$OUT/codebook" \
  --out "$D/tokens" --shard-size $SHARD --device $DEVICE
$DALLE tokens "$D/val_scenes" "$D/val_signs" --preset $PRESET --vqvae "$OUT/codebook" \
  --out "$D/val_tokens" --shard-size 250 --device $DEVICE
mark tokens

# 5. the transformer: TRAIN_STEPS of BATCH (the learning-rate schedule) or TRAIN_MINUTES, whichever ends first;
#    with within-word positions for the spelled characters (held-out words: BENCHMARKS.md, "Within-word positions")
$DALLE train --preset $PRESET --tokens "$D"/tokens/*.tar --val-tokens "$D"/val_tokens/*.tar \
  --tokenizer "$OUT/tokenizer.json" --vqvae "$OUT/codebook" --out "$OUT/run" --set dalle.spell_pos=16 \
  --set dalle_train.batch_size=$BATCH --set dalle_train.max_steps=$TRAIN_STEPS \
  --set dalle_train.max_minutes=$TRAIN_MINUTES --set dalle_train.val_every=$(( TRAIN_STEPS / 10 > 0 ? TRAIN_STEPS / 10 : 1 )) \
  --set dalle_train.image_every=0 --set dalle_train.ckpt_every=$(( TRAIN_STEPS / 4 > 0 ? TRAIN_STEPS / 4 : 1 )) \
  --set data.num_workers=$WORKERS
mark transformer

# 6. the scorer
$DALLE scorer train "$D"/signs/* "$D"/scenes/* --preset $PRESET --tokenizer "$OUT/tokenizer.json" \
  --out "$OUT/scorer" --set scorer_train.max_steps=$SCORER_STEPS --set scorer_train.max_minutes=$SCORER_MINUTES
mark scorer

# 7. the bundle, float16, every file at most 16 MiB
python scripts/ship_bundle.py "$OUT/run/bundle" --preset $PRESET --vqvae "$OUT/codebook" --codebook "$OUT/codebook" \
  --scorer "$OUT/scorer/scorer" --top-k 16 --temperature 1.0 --meta license=mit --meta trained_on=gpu \
  --out "$OUT/candidate"
too_big=$(find "$OUT/candidate" -type f -size +16M)
if [ -n "$too_big" ]; then echo "files over 16 MiB: $too_big" >&2; exit 1; fi
mark bundle
echo "candidate: $OUT/candidate"
