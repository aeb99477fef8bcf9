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
#    2,000 signs and 500 emoji fixes the codes. CONTEXT_DECODER=1 also trains the context decoder on
#    top of it (its codes never change; 21 min on one core) and ships it; the shipped bundle of
#    2026-12-03 decodes with the centroids (CONTEXT_DECODER unset).
dalle vqvae codebook "$D/scenes" "$D/signs" "$D/emoji/train" --images 2500 2000 500 --preset small \
  --out "$W/codebook8192"
VQVAE=$W/codebook8192
if [ "${CONTEXT_DECODER:-0}" = 1 ]; then
  dalle vqvae train $ALL --preset small --init-from "$W/codebook8192" --out "$W/vqvae"
  VQVAE=$W/vqvae/export
fi
dalle vqvae eval "$D/val_scenes" "$D/heldout_scenes" "$D/val_signs" "$D/heldout_signs" "$D/emoji/val" \
  --vqvae "$VQVAE" --out "$W/vqvae_eval" --device cpu

# 4. token shards (84,286 training samples) and held-out token shards for the learning curve
dalle tokens "$D/signs" --preset small --vqvae "$W/codebook8192" --out "$D/tokens/signs" --shard-size 5000 --device cpu
dalle tokens "$D/scenes" "$D/emoji/train" --preset small --vqvae "$W/codebook8192" --out "$D/tokens/other" \
  --shard-size 5000 --device cpu
dalle tokens "$D/val_scenes" "$D/val_signs" --preset small --vqvae "$W/codebook8192" --out "$D/val_tokens" \
  --shard-size 250 --device cpu

# 5. transformer: bf16 autocast where the CPU multiplies bfloat16 natively (2x fp32 with AVX-512 BF16),
#    fp32 elsewhere (emulated bf16 ran 25x slower than fp32 on an AVX2 core); held-out loss every 250
#    steps. MAX_STEPS: the shipped run did 3,600 (about 100 min on one core with the fused loss).
PRECISION=$(python -c "from train.trainer import cpu_has_bf16; print('bf16-mixed' if cpu_has_bf16() else '32')")
dalle train --preset small --tokens "$D"/tokens/*/*.tar --val-tokens "$D"/val_tokens/*.tar \
  --tokenizer "$W/tokenizer.json" --vqvae "$W/codebook8192" --out "$W/run" \
  --set dalle_train.precision="$PRECISION" --set dalle_train.val_every=250 --set dalle_train.image_every=1000 \
  --set dalle_train.max_steps="${MAX_STEPS:-3600}"

# 5b. continued from that bundle with a fresh cosine schedule at a lower peak (the shipped model:
#     3,700 more steps, lr 6e-4; about 110 min on one core)
dalle train --preset small --tokens "$D"/tokens/*/*.tar --val-tokens "$D"/val_tokens/*.tar \
  --tokenizer "$W/tokenizer.json" --vqvae "$W/codebook8192" --out "$W/run2" --init-from "$W/run/bundle" \
  --set dalle_train.precision="$PRECISION" --set dalle_train.val_every=250 --set dalle_train.image_every=1000 \
  --set dalle_train.lr=6.0e-4 --set dalle_train.ckpt_every=250 --set dalle_train.max_steps="${MAX_STEPS2:-3700}"

# 5c. continued once more from that bundle (the shipped model: 3,800 more steps, lr 5e-4; 108 min on one core)
dalle train --preset small --tokens "$D"/tokens/*/*.tar --val-tokens "$D"/val_tokens/*.tar \
  --tokenizer "$W/tokenizer.json" --vqvae "$W/codebook8192" --out "$W/run3" --init-from "$W/run2/bundle" \
  --set dalle_train.precision="$PRECISION" --set dalle_train.val_every=250 --set dalle_train.image_every=1000 \
  --set dalle_train.lr=5.0e-4 --set dalle_train.ckpt_every=250 --set dalle_train.max_steps="${MAX_STEPS3:-3800}"

# 5d. continued a third time, from the bundle of 5c (the shipped model: 2,400 more steps, lr 4e-4; 59 min on
#     one core; on 2026-12-04 from the committed bundle, the run directories of 5-5c being gone)
dalle train --preset small --tokens "$D"/tokens/*/*.tar --val-tokens "$D"/val_tokens/*.tar \
  --tokenizer "$W/tokenizer.json" --vqvae "$W/codebook8192" --out "$W/run4" --init-from "$W/run3/bundle" \
  --set dalle_train.precision="$PRECISION" --set dalle_train.val_every=250 --set dalle_train.image_every=1000 \
  --set dalle_train.lr=4.0e-4 --set dalle_train.ckpt_every=250 --set dalle_train.max_steps="${MAX_STEPS4:-2400}"

# 6. the reranking scorer (5,000 steps of 64: about 70 min on one core)
dalle scorer train "$D/signs" "$D/scenes" --preset small --tokenizer "$W/tokenizer.json" --out "$W/scorer" \
  --set scorer_train.max_steps=5000

# 6b. the scorer fine-tuned for relations: 10k scenes that all state one, and heads that make both towers
#     encode which object comes first along the relation's axis (4,500 steps; about 55 min on one core)
[ -d "$D/relation_scenes" ] || dalle data scenes "$D/relation_scenes" -n 10000 --resolution 64 --seed 7 --relation-share 1
dalle scorer train "$D/signs" "$D/scenes" "$D/relation_scenes" --preset small --tokenizer "$W/tokenizer.json" \
  --out "$W/scorer_rel" --init-from "$W/scorer/scorer" --set scorer_train.max_steps=4500 \
  --set 'scorer_train.aux_heads=[cells,chars,text_chars,text_relation,layout,text_layout]'

# 6c. the scorer continued twice more (2026-12-06: 4,500 steps, then 4,500 at lr 7e-4; 27 + 37 min on one core)
for step in "scorer_c $W/scorer_rel/scorer" "scorer_c2 $W/scorer_c/scorer --set scorer_train.lr=7.0e-4"; do
  read -r out init extra <<< "$step"
  # shellcheck disable=SC2086
  dalle scorer train "$D/signs" "$D/scenes" "$D/relation_scenes" --preset small --tokenizer "$W/tokenizer.json" \
    --out "$W/$out" --init-from $init --set scorer_train.max_steps=4500 $extra \
    --set 'scorer_train.aux_heads=[cells,chars,text_chars,text_relation,layout,text_layout]'
done

# 3b. (2026-12-06) the codebook refitted from step 3's: codes chosen by luma + 2.5 x chroma distance (the small
#     preset's vqvae.chroma_weight), scenes re-rendered once and signs twice in random palette colours instead of
#     their own, 5,000 signs; the new codes renumbered so that 93% of training patches keep their index (2 min 45 s)
dalle vqvae codebook "$D/scenes" "$D/signs" "$D/emoji/train" --images 2500 5000 500 --recolour 1 2 0 --preset small \
  --init-from "$W/codebook8192" --out "$W/codebook_c25"
# 4b. token shards again, with that codebook
dalle tokens "$D/signs" --preset small --vqvae "$W/codebook_c25" --out "$D/tokens_c25/signs" --shard-size 5000 --device cpu
dalle tokens "$D/scenes" "$D/emoji/train" --preset small --vqvae "$W/codebook_c25" --out "$D/tokens_c25/other" \
  --shard-size 5000 --device cpu
dalle tokens "$D/val_scenes" "$D/val_signs" --preset small --vqvae "$W/codebook_c25" --out "$D/val_tokens_c25" \
  --shard-size 250 --device cpu
# 5e. the transformer of 5d fine-tuned onto the new codes (2026-12-06: from the shipped bundle, the run directories
#     of 5-5d being gone; 6,000 steps, 85 min on one core)
dalle train --preset small --tokens "$D"/tokens_c25/*/*.tar --val-tokens "$D"/val_tokens_c25/*.tar \
  --tokenizer "$W/tokenizer.json" --vqvae "$W/codebook_c25" --out "$W/run5" --init-from "$W/run4/bundle" \
  --set dalle_train.precision="$PRECISION" --set dalle_train.val_every=250 --set dalle_train.image_every=1000 \
  --set dalle_train.lr=5.0e-4 --set dalle_train.ckpt_every=250 --set dalle_train.max_steps="${MAX_STEPS5:-6000}"
# 5f. (2026-12-06, second to fourth sessions) continued three times, each on a fresh cosine schedule: 8,000 steps at
#     lr 4e-4, 8,000 at 3e-4, 6,000 at 2.5e-4 (about 1 h 30 min, 1 h 45 min and 1 h 25 min of one core; held-out
#     loss 0.416 -> 0.404 -> 0.399 -> 0.398)
prev=run5
for spec in run6:4.0e-4:8000 run7:3.0e-4:8000 run8:2.5e-4:6000; do
  IFS=: read -r run lr steps <<< "$spec"
  dalle train --preset small --tokens "$D"/tokens_c25/*/*.tar --val-tokens "$D"/val_tokens_c25/*.tar \
    --tokenizer "$W/tokenizer.json" --vqvae "$W/codebook_c25" --out "$W/$run" --init-from "$W/$prev/bundle" \
    --set dalle_train.precision="$PRECISION" --set dalle_train.val_every=250 --set dalle_train.image_every=1000 \
    --set dalle_train.lr="$lr" --set dalle_train.ckpt_every=250 --set dalle_train.max_steps="$steps"
  prev=$run
done
# 5g. (2026-12-07) within-word positions for the spelled characters, the new tables at zero, 8,000 steps from run7
#     (the shipped continuation; run8 was no better) at lr 4e-4 (1 h 26 min on one core; held-out sign codes 0.451 ->
#     0.425, scenes 0.291 -> 0.288; the same continuation without the tables: 0.450 / 0.289)
dalle train --preset small --tokens "$D"/tokens_c25/*/*.tar --val-tokens "$D"/val_tokens_c25/*.tar \
  --tokenizer "$W/tokenizer.json" --vqvae "$W/codebook_c25" --out "$W/run9" --init-from "$W/run7/bundle" \
  --set dalle.spell_pos=16 --set dalle_train.precision="$PRECISION" --set dalle_train.val_every=500 \
  --set dalle_train.image_every=2000 --set dalle_train.lr=4.0e-4 --set dalle_train.warmup_steps=200 \
  --set dalle_train.ckpt_every=250 --set dalle_train.max_steps="${MAX_STEPS9:-8000}"
# 5h. (2026-12-07, seventh session) run9 continued 10,000 steps on a fresh cosine at lr 3e-4 (1 h 45 min on one core;
#     held-out sign codes 0.425 -> 0.410, scenes 0.288 -> 0.284)
dalle train --preset small --tokens "$D"/tokens_c25/*/*.tar --val-tokens "$D"/val_tokens_c25/*.tar \
  --tokenizer "$W/tokenizer.json" --vqvae "$W/codebook_c25" --out "$W/run10" --init-from "$W/run9/bundle" \
  --set dalle.spell_pos=16 --set dalle_train.precision="$PRECISION" --set dalle_train.val_every=500 \
  --set dalle_train.image_every=2000 --set dalle_train.lr=3.0e-4 --set dalle_train.warmup_steps=200 \
  --set dalle_train.ckpt_every=250 --set dalle_train.max_steps="${MAX_STEPS10:-10000}"

# 3c. (2026-12-06, second session) the context decoder on top of codebook_c25 (its codes never change, so the
#     transformer is untouched): scenes and signs re-rendered in palette colours as caption-less shards, 3,000 steps,
#     then 1,500 more with a second recoloured copy of the signs and edge weight 0.1 (13 + 7 min on one core)
dalle data recolour "$D/scenes" "$D/signs" --out "$D/recoloured" --copies 1 --seed 5
dalle data recolour "$D/signs" --out "$D/recoloured_signs" --copies 1 --seed 6
dalle vqvae train "$D/recoloured" "$D/emoji/train" --preset small --init-from "$W/codebook_c25" --out "$W/vqvae_rc" \
  --set vqvae_train.max_steps=3000
dalle vqvae train "$D/recoloured" "$D/recoloured_signs" "$D/emoji/train" --preset small --init-from "$W/vqvae_rc/export" \
  --out "$W/vqvae_rc3" --set vqvae_train.max_steps=1500 --set vqvae_train.edge_weight=0.1 --set vqvae_train.lr=3.0e-4

# 6d. (2026-12-06, second session) the scorer annealed: 3,000 steps more at lr 3e-4 (19 min on one core)
dalle scorer train "$D/signs" "$D/scenes" "$D/relation_scenes" --preset small --tokenizer "$W/tokenizer.json" \
  --out "$W/scorer_c3" --init-from "$W/scorer_c2/scorer" --set scorer_train.max_steps=3000 --set scorer_train.lr=3.0e-4 \
  --set 'scorer_train.aux_heads=[cells,chars,text_chars,text_relation,layout,text_layout]'

# 6e. (2026-12-06, third session) image negatives: renders of the truth with one stated fact false (two per
# sample, caption -> image loss), colour / shape factored heads, bf16 autocast; 3,000 steps at lr 3e-4 (28 min)
SCORER_HEADS='scorer_train.aux_heads=[cells,chars,text_chars,text_relation,layout,text_layout]'
dalle scorer train "$D/signs" "$D/scenes" "$D/relation_scenes" --preset small --tokenizer "$W/tokenizer.json" \
  --out "$W/scorer_e" --init-from "$W/scorer_c3/scorer" --set scorer_train.max_steps=3000 --set scorer_train.lr=3.0e-4 \
  --set scorer_train.precision=bf16-mixed --set scorer_train.image_negatives=2 --set scorer_train.aux_factored=true \
  --set "$SCORER_HEADS"

# The steps below repeat three moves: a bundle of a run's transformer with a scorer at the shipped decoder and
# sampling settings; that bundle's own samples for training captions, labelled by the checker; a scorer
# fine-tuned on such samples beside the renders (1,500 steps at lr 3e-4).
ship() {          # RUN SCORER OUT [ship_bundle options]
  local run=$1 scorer=$2 out=$3; shift 3
  PYTHONPATH=. python scripts/ship_bundle.py "$W/$run/bundle" --vqvae "$W/vqvae_rc3/export" --codebook "$W/codebook_c25" \
    --scorer "$W/$scorer/scorer" --top-k 8 --guidance 2 --temperature 1.0 --out "$W/$out" "$@"
}
own_samples() {   # BUNDLE OUT SEED SHARD...: 8 candidates for each of 900 captions; the last 15% of them held out
  local bundle=$1 out=$2 seed=$3; shift 3
  dalle scorer samples "$@" --model "$W/$bundle" --out "$W/$out" --prompts 900 --candidates 8 --seed "$seed" \
    --val-share 0.15 --copies 10
}
scorer_on_samples() {   # OUT INIT SAMPLES...
  local out=$1 init=$2; shift 2
  dalle scorer train "$D/signs" "$D/scenes" "$D/relation_scenes" "$@" --preset small \
    --tokenizer "$W/tokenizer.json" --out "$W/$out" --init-from "$W/$init/scorer" \
    --set scorer_train.max_steps=1500 --set scorer_train.lr=3.0e-4 --set scorer_train.warmup_steps=50 \
    --set scorer_train.precision=bf16-mixed --set scorer_train.image_negatives=1 --set scorer_train.aux_factored=true \
    --set "$SCORER_HEADS"
}

# 6f. the model's own samples at the shipped sampling settings (the transformer of 5e with scorer_e), 900
# training scene captions (25 min on one core); the held-out 15% measure how often a scorer puts a passing
# candidate above a failing one
ship run5 scorer_e candidate_e
own_samples candidate_e generated 1 "$D/scenes/00029.tar" "$D/relation_scenes/00009.tar"

# 6g. the scorer fine-tuned on them beside the renders (12 min)
scorer_on_samples scorer_g scorer_e "$W/generated/train"

# 6h. (2026-12-06, fourth session) the transformer of 5f's run7 draws its own samples (other captions, seed 3; 26 min)
ship run7 scorer_g candidate_g7
own_samples candidate_g7 generated3 3 "$D/scenes/00027.tar" "$D/relation_scenes/00007.tar"

# 6i. scorer G fine-tuned on them beside 6f's draw (13 min)
scorer_on_samples scorer_h scorer_g "$W/generated/train" "$W/generated3/train"

# 7. the bundle that ships: transformer + image tokenizer (checked: same centroids) + scorer + sampling defaults
#    (run10: 5f's run7 with within-word positions, continued twice; run8 was no better on dalle eval)
ship run10 scorer_h candidate --meta license=mit --meta continued_from=43500
echo "bundle: $W/candidate (check it with dalle eval --model $W/candidate; copy it to dalle/assets/default to ship it)"
