#!/usr/bin/env bash
# The learning runs of docs/learning.md on one GPU. Runs of one wave share the GPU at once
# (each leaves it idle much of the time: rollouts are latency-bound; ~36 GiB each).
#
#   RUNS=runs/learning DATA=data benchmarks/learning_runs.sh [WAVE ...]
#
# Needs: the GGUF of qwen2.5-coder-1.5b-instruct (../shared/models/get.sh, or TIRGRPO_MODELS),
# and DATA/gsm8k-verify{,-hard,-prefill,-check}/{train,eval-500}.jsonl as the waves need them,
# and DATA/gsm8k-verify-format/train.jsonl for format-warm (commands in docs/data-format.md).
# Waves:
#   from-base  GRPO from the base model, the recipe that learns to judge (configs/...-grpo-from-base.toml:
#              384 tokens, 16 pairs a step, lr 1e-5, 150 steps, evaluated before and every 50 steps)
#   first-recipe  the first from-base recipe (configs/...-grpo-from-base-128.toml: 128 tokens, 8 pairs,
#              lr 5e-6, 40 steps), on which the waves below build with --set
#   ablations  the same from the base model with the plain reward (no judge_only): the original
#              attempt's recipe (random prompts, token mean, no KL) and paired + sequence mean
#   sft        SFT, then GRPO from it (configs/...-sft.toml, configs/...-grpo.toml); GRPO's
#              eval_before is the SFT model's evaluation
#   hard       from-base and sft on the hard task (gsm8k-verify-hard)
#   hard-wide  the hard task with the recipe that learns the easy one (configs/...-grpo-from-base.toml),
#              from the base model; hard-wide-sft: SFT on the hard task, 300 steps (4,800 of its 10,342
#              examples; 70 steps left its loss at ~0.03 a token), then that recipe from it
#   hard-sft-gentle  GRPO on the hard-wide-sft wave's SFT judge (AUROC 0.955) that does not
#              sharpen it away: the wide recipe at lr 1e-5 kept its correctness but cut its AUROC to
#              0.887; here lr 2e-6 with KL 0.04, and lr 2e-6 with KL 0.2, 150 steps each
#   hard-wide-long  hard-wide for 300 steps (its AUROC rose 0.63 -> 0.70 in 150 steps, still rising)
#   from-base-short  GRPO from the base model with completions cut to 32 tokens (the decision
#              is most of every completion, so its credit is not spread over a long preamble),
#              G = 16, lr 1e-5, 60 steps
#   decision   GRPO from the base model with the advantage on the decision tokens only
#              (grpo.credit = "decision"), 80 steps at lr 5e-6 and at lr 1e-5, evaluated at
#              step 40 too (the base model's evaluation is the from-base wave's)
#   symmetric  GRPO from the base model paying every decision by whether it was right
#              (rewards.decline = -1, rewards.decline_wrong = +1), 40 steps: decision credit at
#              lr 5e-6 and 1e-5, all-token credit at 5e-6 (the base model's evaluation is the
#              from-base wave's)
#   long-budget  GRPO from the base model where truncation is not the first signal (at 128 new
#              tokens the base model is cut off on over half its completions, and the first
#              thing GRPO learns is to be short): 384 new tokens; and 128 with
#              grpo.mask_truncated (truncated completions left out of the update); 40 steps
#              each, evaluated after (and the first before, at 384 tokens)
#   long-384, long-384-wide  the 384-token from-base run longer: 150 steps, evaluated every
#              50 (~25 GPU-minutes with its evaluations on a GPU of its own); and wider: 60 steps
#              of 16 pairs (19 GPU-minutes, sharing a GPU with one other run)
#   wider-2gpu the 384-token run with 32 pairs a step (twice long-384-wide's), 60 steps, on two
#              GPUs under torchrun (TIRGRPO_2GPU; each GPU does long-384-wide's work per step)
#   wide-long  long-384-wide for 150 steps, evaluated every 50 (past the target's 20 GPU-minutes:
#              does the skill keep rising at the rate of its first 60 steps?)
#   wide-fast  wide-long at lr 1e-5 (twice the from-base config's): with 256 completions a step
#              the step's label signal rises above its noise, so a larger step may now be taken
#   update-speed  8 steps of the 384-token from-base run, no evaluation: the update's time per
#              step (run it under the code before and after a change, on one GPU each)
#   format-warm  SFT on format-only targets whose decisions ignore the label (30 steps,
#              DATA/gsm8k-verify-format, `tirgrpo data format-warmup`), then GRPO from it with 16
#              pairs a step, 60 steps: GRPO has to teach the decision, not the format
#   check      GRPO from the base model, 384 new tokens, 60 steps, on prompts whose bridge names the
#              check to make (DATA/gsm8k-verify-check, `tirgrpo data gsm8k-verify --bridge check`),
#              evaluated before (the base model under that bridge) and after
#   prefill    GRPO from the base model on prompts that end with the seed's pre-filled start of
#              the analysis ("Let me go through my code step by step. Looking at my code,";
#              DATA/gsm8k-verify-prefill, `tirgrpo data gsm8k-verify --bridge seed-prefill`), 256 new tokens,
#              truncated completions left out of the update, 40 steps: the from-base recipe; the
#              same with the sequence-mean loss; with the label-symmetric reward; on
#              Qwen2.5-Coder-0.5B-Instruct
#   prefill-fast  the prefill recipe at lr 1e-5
#   small      Qwen2.5-Coder-0.5B-Instruct: SFT (configs/...-0.5b-sft.toml), then GRPO from it
#              with each credit (configs/...-0.5b-grpo.toml)
# Each run writes RUNS/NAME/ (metrics.jsonl, eval_before.json, eval_after.json, plots, report)
# and RUNS/NAME.log; a finished run is skipped when the script is run again. EXTRA adds
# --set KEY=VALUE to every GRPO run.
set -u
RUNS=${RUNS:-runs/learning}
DATA=${DATA:-data}
TIRGRPO=${TIRGRPO:-python3 -m tirgrpo}
TIRGRPO_2GPU=${TIRGRPO_2GPU:-torchrun --standalone --nproc-per-node 2 -m tirgrpo}
EXTRA=${EXTRA:-}
BASE=configs/gsm8k-verify-qwen2.5-coder-1.5b-grpo-from-base-128.toml
mkdir -p "$RUNS"

# train NAME CONFIG [--set ...]: one GRPO run on $TASK, skipped when it already finished;
# launched by $LAUNCH when set (the two-GPU waves), else by $TIRGRPO.
train() {
  local name=$1 config=$2; shift 2
  [ -f "$RUNS/$name/summary.json" ] && { echo "$name: done already"; return 0; }
  ${LAUNCH:-$TIRGRPO} train --config "$config" --overwrite --set run.out_dir="$RUNS/$name" \
    --set data.train="$DATA/$TASK/train.jsonl" --set data.eval="$DATA/$TASK/eval-500.jsonl" \
    --set run.save_final_checkpoint=false --set run.tensorboard=false "$@" $EXTRA > "$RUNS/$name.log" 2>&1
  echo "$name: exit $?"
}

# sft NAME [CONFIG [--set ...]]: SFT on $TASK (default: the 1.5B's config), skipped when it
# already finished.
sft() {
  local name=$1 config=${2:-configs/gsm8k-verify-qwen2.5-coder-1.5b-sft.toml}
  shift; [ $# -gt 0 ] && shift
  [ -f "$RUNS/$name/summary.json" ] && { echo "$name: done already"; return 0; }
  $TIRGRPO sft --config "$config" --overwrite --set run.out_dir="$RUNS/$name" \
    --set data.train="$DATA/$TASK/train.jsonl" --set run.tensorboard=false "$@" > "$RUNS/$name.log" 2>&1
  echo "$name: exit $?"
}

# sft_then_grpo TAG: SFT on $TASK, then GRPO from it.
sft_then_grpo() {
  local tag=$1
  sft "sft-$tag"
  train "sft-grpo-$tag" configs/gsm8k-verify-qwen2.5-coder-1.5b-grpo.toml --set model.init_from="$RUNS/sft-$tag"
}

plain=(--set rewards.judge_only=false --set grpo.beta=0.0)
decision=(--set grpo.credit=decision --set optim.total_steps=80 --set run.eval_every=40 --set run.eval_before=false)
symmetric=(--set rewards.decline=-1.0 --set rewards.decline_wrong=1.0 --set optim.total_steps=40
           --set run.eval_before=false)
waves=("$@")
[ ${#waves[@]} -eq 0 ] && waves=(from-base sft)
for wave in "${waves[@]}"; do
  case $wave in
    from-base) TASK=gsm8k-verify train grpo-from-base configs/gsm8k-verify-qwen2.5-coder-1.5b-grpo-from-base.toml ;;
    first-recipe) TASK=gsm8k-verify train grpo-from-base-128 "$BASE" ;;
    from-base-short)
      TASK=gsm8k-verify train grpo-from-base-short "$BASE" --set rollout.max_new_tokens=32 \
        --set rollout.group_size=16 --set optim.lr=1e-5 --set optim.total_steps=60 ;;
    ablations)
      TASK=gsm8k-verify train grpo-from-base-original "$BASE" "${plain[@]}" --set data.paired=false &
      TASK=gsm8k-verify train grpo-from-base-paired-seqmean "$BASE" "${plain[@]}" --set grpo.loss_type=grpo &
      wait ;;
    sft) TASK=gsm8k-verify sft_then_grpo easy ;;
    decision)
      TASK=gsm8k-verify train grpo-from-base-decision "$BASE" "${decision[@]}" &
      TASK=gsm8k-verify train grpo-from-base-decision-lr1e-5 "$BASE" "${decision[@]}" --set optim.lr=1e-5 &
      wait ;;
    symmetric)
      TASK=gsm8k-verify train grpo-from-base-sym-decision "$BASE" "${symmetric[@]}" --set grpo.credit=decision &
      TASK=gsm8k-verify train grpo-from-base-sym-decision-lr1e-5 "$BASE" "${symmetric[@]}" \
        --set grpo.credit=decision --set optim.lr=1e-5 &
      TASK=gsm8k-verify train grpo-from-base-sym-all "$BASE" "${symmetric[@]}" &
      wait ;;
    long-budget)
      long=(--set rollout.max_new_tokens=384 --set optim.total_steps=40)
      TASK=gsm8k-verify train grpo-from-base-384 "$BASE" "${long[@]}" &
      TASK=gsm8k-verify train grpo-from-base-mask-truncated "$BASE" --set grpo.mask_truncated=true \
        --set optim.total_steps=40 --set run.eval_before=false &
      wait ;;
    long-384)
      TASK=gsm8k-verify train grpo-from-base-384-150 "$BASE" --set rollout.max_new_tokens=384 \
        --set run.eval_before=false --set optim.total_steps=150 --set run.eval_every=50 ;;
    long-384-wide)
      TASK=gsm8k-verify train grpo-from-base-384-wide "$BASE" --set rollout.max_new_tokens=384 \
        --set run.eval_before=false --set optim.total_steps=60 --set rollout.prompts_per_step=32 ;;
    format-warm)
      TASK=gsm8k-verify-format sft sft-format configs/gsm8k-verify-qwen2.5-coder-1.5b-sft.toml \
        --set optim.total_steps=30
      TASK=gsm8k-verify train grpo-format-warm "$BASE" --set model.init_from="$RUNS/sft-format" \
        --set rollout.prompts_per_step=32 --set optim.total_steps=60 ;;
    wider-2gpu)
      LAUNCH=$TIRGRPO_2GPU TASK=gsm8k-verify train grpo-from-base-384-wider "$BASE" \
        --set rollout.max_new_tokens=384 --set run.eval_before=false --set optim.total_steps=60 \
        --set rollout.prompts_per_step=64 ;;
    wide-long)
      TASK=gsm8k-verify train grpo-from-base-384-wide-150 "$BASE" --set rollout.max_new_tokens=384 \
        --set run.eval_before=false --set optim.total_steps=150 --set rollout.prompts_per_step=32 \
        --set run.eval_every=50 ;;
    wide-fast)
      TASK=gsm8k-verify train grpo-from-base-384-wide-150-lr1e-5 "$BASE" --set rollout.max_new_tokens=384 \
        --set run.eval_before=false --set optim.total_steps=150 --set rollout.prompts_per_step=32 \
        --set run.eval_every=50 --set optim.lr=1e-5 ;;
    update-speed)
      TASK=gsm8k-verify train "update-speed${TAG:-}" "$BASE" --set rollout.max_new_tokens=384 \
        --set run.eval_before=false --set optim.total_steps=8 --set run.eval_max_examples=16 ;;
    check)
      TASK=gsm8k-verify-check train grpo-from-base-check "$BASE" --set rollout.max_new_tokens=384 \
        --set optim.total_steps=60 ;;
    prefill|prefill-fast)
      pre=(--set rollout.max_new_tokens=256 --set grpo.mask_truncated=true --set optim.total_steps=40)
      if [ "$wave" = prefill ]; then
        TASK=gsm8k-verify-prefill train grpo-from-base-prefill "$BASE" "${pre[@]}" &
        TASK=gsm8k-verify-prefill train grpo-from-base-prefill-seqmean "$BASE" "${pre[@]}" \
          --set grpo.loss_type=grpo --set run.eval_before=false &
        TASK=gsm8k-verify-prefill train grpo-from-base-prefill-sym "$BASE" "${pre[@]}" \
          --set rewards.decline=-1.0 --set rewards.decline_wrong=1.0 --set run.eval_before=false &
        TASK=gsm8k-verify-prefill train grpo-from-base-prefill-0.5b "$BASE" "${pre[@]}" \
          --set model.name_or_path=qwen2.5-coder-0.5b-instruct &
      else
        TASK=gsm8k-verify-prefill train grpo-from-base-prefill-lr1e-5 "$BASE" "${pre[@]}" --set optim.lr=1e-5 \
          --set run.eval_before=false &
      fi
      wait ;;
    small)
      TASK=gsm8k-verify sft sft-0.5b configs/gsm8k-verify-qwen2.5-coder-0.5b-sft.toml
      GRPO=configs/gsm8k-verify-qwen2.5-coder-0.5b-grpo.toml
      TASK=gsm8k-verify train sft-grpo-0.5b "$GRPO" --set model.init_from="$RUNS/sft-0.5b" &
      TASK=gsm8k-verify train sft-grpo-0.5b-decision "$GRPO" --set model.init_from="$RUNS/sft-0.5b" \
        --set grpo.credit=decision --set run.eval_before=false &
      wait ;;
    hard-wide)
      TASK=gsm8k-verify-hard train grpo-from-base-hard-wide configs/gsm8k-verify-qwen2.5-coder-1.5b-grpo-from-base.toml ;;
    hard-wide-sft)
      TASK=gsm8k-verify-hard sft sft-hard-wide configs/gsm8k-verify-qwen2.5-coder-1.5b-sft.toml \
        --set optim.total_steps=300
      TASK=gsm8k-verify-hard train sft-grpo-hard-wide configs/gsm8k-verify-qwen2.5-coder-1.5b-grpo-from-base.toml \
        --set model.init_from="$RUNS/sft-hard-wide" ;;
    hard-sft-gentle)
      TASK=gsm8k-verify-hard sft sft-hard-wide configs/gsm8k-verify-qwen2.5-coder-1.5b-sft.toml \
        --set optim.total_steps=300
      TASK=gsm8k-verify-hard train sft-grpo-hard-lr2e-6 configs/gsm8k-verify-qwen2.5-coder-1.5b-grpo-from-base.toml \
        --set model.init_from="$RUNS/sft-hard-wide" --set optim.lr=2e-6 &
      TASK=gsm8k-verify-hard train sft-grpo-hard-lr2e-6-kl0.2 configs/gsm8k-verify-qwen2.5-coder-1.5b-grpo-from-base.toml \
        --set model.init_from="$RUNS/sft-hard-wide" --set optim.lr=2e-6 --set grpo.beta=0.2 --set run.eval_before=false &
      wait ;;
    hard-wide-long)
      TASK=gsm8k-verify-hard train grpo-from-base-hard-wide-300 configs/gsm8k-verify-qwen2.5-coder-1.5b-grpo-from-base.toml \
        --set optim.total_steps=300 --set run.eval_every=100 ;;
    hard)
      TASK=gsm8k-verify-hard train grpo-from-base-hard "$BASE" &
      TASK=gsm8k-verify-hard sft_then_grpo hard &
      wait ;;
    *) echo "unknown wave $wave (from-base, from-base-short, ablations, sft, hard, hard-wide, hard-wide-sft, hard-sft-gentle, hard-wide-long, decision, symmetric, long-budget,"\
            "first-recipe, long-384, long-384-wide, wider-2gpu, wide-long, wide-fast, update-speed, format-warm, check, prefill, prefill-fast, small)"; exit 2 ;;
  esac
done
