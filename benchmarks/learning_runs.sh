#!/usr/bin/env bash
# The learning runs of docs/learning.md, on one GPU: several runs share the GPU at once (each
# leaves it idle much of the time: rollouts are latency-bound), in three waves that fit 139 GiB.
#
#   RUNS=runs/learning DATA=data benchmarks/learning_runs.sh [WAVE ...]
#
# Needs: the GGUF of qwen2.5-coder-1.5b-instruct (../shared/models/get.sh, or TIRGRPO_MODELS),
# and DATA/gsm8k-verify{,-hard}/{train,eval-500}.jsonl (commands in docs/data-format.md).
# Waves: `base` (GRPO from the base model: paired + sequence mean, the original recipe, the hard task),
# `judge` (GRPO from the base model with rewards.judge_only),
# `sft` (SFT then GRPO from it, easy task), `sft-hard` (the same on the hard task). Each run
# writes RUNS/NAME/ (metrics.jsonl, eval_before.json, eval_after.json, plots, report) and a
# log RUNS/NAME.log; a finished run is skipped when the script is run again.
set -u
RUNS=${RUNS:-runs/learning}
DATA=${DATA:-data}
TIRGRPO=${TIRGRPO:-python3 -m tirgrpo}
EXTRA=${EXTRA:-}   # more --set KEY=VALUE for every GRPO run, e.g. EXTRA="--set optim.total_steps=40"
mkdir -p "$RUNS"

# train NAME CONFIG [--set ...]: one GRPO run, skipped when it already finished.
train() {
  local name=$1 config=$2; shift 2
  [ -f "$RUNS/$name/summary.json" ] && { echo "$name: done already"; return 0; }
  $TIRGRPO train --config "$config" --overwrite --set run.out_dir="$RUNS/$name" \
    --set data.train="$DATA/$TASK/train.jsonl" --set data.eval="$DATA/$TASK/eval-500.jsonl" \
    --set run.save_final_checkpoint=false --set run.tensorboard=false "$@" $EXTRA > "$RUNS/$name.log" 2>&1
  echo "$name: exit $?"
}

# sft_then_grpo TAG: SFT, then GRPO from it (its eval_before is the SFT model's evaluation).
sft_then_grpo() {
  local tag=$1
  if [ ! -f "$RUNS/sft-$tag/summary.json" ]; then
    $TIRGRPO sft --config configs/gsm8k-verify-qwen2.5-coder-1.5b-sft.toml --set run.out_dir="$RUNS/sft-$tag" \
      --set data.train="$DATA/$TASK/train.jsonl" --set run.tensorboard=false > "$RUNS/sft-$tag.log" 2>&1
    echo "sft-$tag: exit $?"
  fi
  train "sft-grpo-$tag" configs/gsm8k-verify-qwen2.5-coder-1.5b-grpo.toml --set model.init_from="$RUNS/sft-$tag" \
    --set rewards.judge_only=true
}

BASE=configs/gsm8k-verify-qwen2.5-coder-1.5b-grpo-from-base.toml
waves=("$@")
[ ${#waves[@]} -eq 0 ] && waves=(base sft sft-hard)
for wave in "${waves[@]}"; do
  case $wave in
    original)
      # the original attempt's recipe (random prompts, token-mean loss), the reward as it was
      TASK=gsm8k-verify train grpo-from-base-original $BASE --set data.paired=false --set grpo.loss_type=dapo ;;
    base)
      TASK=gsm8k-verify train grpo-from-base $BASE &
      # the original recipe at the same learning rate: random prompts, token-mean loss
      TASK=gsm8k-verify train grpo-from-base-original $BASE --set data.paired=false --set grpo.loss_type=dapo \
        --set run.eval_before=false &
      TASK=gsm8k-verify-hard train grpo-from-base-hard $BASE &
      wait ;;
    judge)
      # the reward pays for judging the code's output only: boxing another answer is invalid
      TASK=gsm8k-verify train grpo-from-base-judge $BASE --set rewards.judge_only=true --set grpo.loss_type=dapo \
        --set grpo.beta=0.04 ;;
    sft) TASK=gsm8k-verify sft_then_grpo easy ;;
    sft-hard) TASK=gsm8k-verify-hard sft_then_grpo hard ;;
    *) echo "unknown wave $wave (base, original, judge, sft, sft-hard)"; exit 2 ;;
  esac
done
