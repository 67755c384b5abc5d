#!/usr/bin/env bash
# The whole real-model pipeline, from a solver to a judge and what the judge does to answer
# selection, on one machine:
#
#   1. serve     tirgrpo serve MODEL in the background (stopped at the end and on any exit)
#   2. generate  TIR transcripts of the first N_PROBLEMS problems, K samples each, in the
#                model's own chat format, code run in the sandbox, at most MAX_TURNS turns (4)
#                (stopped after GEN_SECONDS; the run goes on with what was written)
#   3. solver    the solver's own report: pass@1, majority@K, pass@K, segments, tokens, time
#   4. split     transcripts -> training / held-out problems (HELDOUT_FRACTION, by a hash of
#                the problem id; TRAIN_EXTRA: other problems' transcripts joining the training
#                side, and HELDOUT_FRACTION=1 then holds out all of this run's problems);
#                prepare --judge-targets on each side (up to PAIRS_PER_QUESTION
#                correct/wrong segment pairs per question, default 4; PREPARE_ARGS=--no-pairing
#                keeps every segment; TRAIN_WRONG_EXAMPLES=answered trains only on the wrong
#                segments of runs that boxed a wrong answer)
#   5. sft       the judge, from the same MODEL, on the training problems' examples
#                (SFT_STEPS, default: 2 passes over them, 10..200 steps of SFT_BATCH)
#   5b. grpo     GRPO on top of the SFT judge, on the same examples (GRPO_STEPS, default 30;
#                0: the judge is the SFT model). JUDGE_START=base instead: no SFT, GRPO alone
#                from MODEL with the recipe that learned GSM8K-verify from the base model
#                (configs/real-transcripts-judge-grpo-from-base.toml, GRPO_STEPS default 150)
#   6. eval      the judge (the SFT model too when GRPO ran, and the untrained MODEL,
#                EVAL_BASE=1) on the held-out problems'
#                examples, K sampled judgements each (AUROC, correctness, bootstrap intervals,
#                baselines), and --selection on the held-out problems' transcripts
#                (majority@K vs judge-gated vs weighted vs pass@K, with intervals)
#   7. summary   WORK/summary.{json,md}, and a short summary printed
#
#   MODEL=/tmp/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf K=8 GEN_SECONDS=480 WORK=runs/real \
#       benchmarks/real_pipeline.sh         # STOP_AFTER=generate first where commands are time-limited
#   MODEL=smollm2-135m-instruct N_PROBLEMS=4 K=2 SFT_STEPS=2 EVAL_SAMPLES=2 WORK=/tmp/rp \
#       DEVICE=cpu benchmarks/real_pipeline.sh                       # the CPU check
#
# Every step logs its start and end to WORK/pipeline.log (and the terminal) and its time to
# WORK/timings.jsonl, and is skipped when its output exists, so a run that was cut short
# resumes where it stopped when started again with the same WORK (generation resumes sample by
# sample; to generate more, delete WORK/generate.done and what the later steps wrote). Each
# command's own output is in WORK/logs/STEP.log. Run from the repository root.
set -euo pipefail
# This checkout's code, whatever else is installed.
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)/src${PYTHONPATH:+:$PYTHONPATH}"

MODEL=${MODEL:-smollm2-135m-instruct}             # a .gguf path, a model folder or a named model
if [ -z "${PROBLEMS:-}" ]; then  # GSM8K test beside the repository, else a copy inside it
  for PROBLEMS in ../shared/data/gsm8k/test.jsonl shared/data/gsm8k/test.jsonl data/gsm8k/test.jsonl; do
    [ -f "$PROBLEMS" ] && break
  done
fi
N_PROBLEMS=${N_PROBLEMS:-0}                       # the first N problems (0 = all)
K=${K:-8}                                         # samples per problem
WORK=${WORK:-runs/real-pipeline}
MAX_BATCH=${MAX_BATCH:-64}                        # rows the server decodes at once
CONCURRENCY=${CONCURRENCY:-64}                    # samples generate keeps in flight
GEN_SECONDS=${GEN_SECONDS:-0}                     # wall-clock cap on generation (0 = none)
GEN_GRACE=${GEN_GRACE:-10}                        # then seconds before generate is killed
MAX_TOKENS=${MAX_TOKENS:-2048}                    # generated tokens per transcript, all turns
MAX_TURNS=${MAX_TURNS:-4}                         # model turns per transcript (a code block ends a turn)
TEMPERATURE=${TEMPERATURE:-0.7}
SFT_STEPS=${SFT_STEPS:-auto}                      # auto: SFT_EPOCHS passes, 10..200 steps
SFT_EPOCHS=${SFT_EPOCHS:-2}
SFT_BATCH=${SFT_BATCH:-16}                        # examples a step
SFT_CONFIG=${SFT_CONFIG:-configs/real-transcripts-judge-sft.toml}
SFT_SET=${SFT_SET:-}                              # more sft overrides, e.g. "--set batch_size=4"
JUDGE_START=${JUDGE_START:-sft}                   # sft: SFT, then GRPO on top; base: GRPO alone from MODEL
case $JUDGE_START in
  sft) GRPO_STEPS=${GRPO_STEPS:-30}                 # GRPO steps on top of the SFT judge (0: none)
       GRPO_CONFIG=${GRPO_CONFIG:-configs/real-transcripts-judge-grpo.toml} ;;
  base) GRPO_STEPS=${GRPO_STEPS:-150}
        GRPO_CONFIG=${GRPO_CONFIG:-configs/real-transcripts-judge-grpo-from-base.toml} ;;
  *) echo "real_pipeline: JUDGE_START must be sft or base, not '$JUDGE_START'" >&2; exit 2 ;;
esac
GRPO_SET=${GRPO_SET:-}                            # more train overrides, e.g. "--set rollout.group_size=4"
EVAL_SAMPLES=${EVAL_SAMPLES:-8}                   # sampled judgements per example
EVAL_MAX_NEW_TOKENS=${EVAL_MAX_NEW_TOKENS:-auto}      # auto: GRPO_CONFIG's rollout.max_new_tokens (not GRPO_SET's)
EVAL_BATCH=${EVAL_BATCH:-64}
EVAL_BASE=${EVAL_BASE:-1}                         # also evaluate the untrained MODEL as a judge
HELDOUT_FRACTION=${HELDOUT_FRACTION:-0.3}
TRAIN_EXTRA=${TRAIN_EXTRA:-}                      # transcript JSONLs of other problems, all for the judge's
                                                  # training (e.g. a STOP_AFTER=generate run on GSM8K train)
SEED=${SEED:-0}
PORT=${PORT:-8765}
DEVICE=${DEVICE:-auto}
SERVE_ARGS=${SERVE_ARGS:-}                        # more serve options, e.g. "--kernels torch"
SANDBOX_ARGS=${SANDBOX_ARGS:-}                    # sandbox options of generate, e.g. --timeout 10
GENERATE_ARGS=${GENERATE_ARGS:-}                  # more generate options
PREPARE_ARGS=${PREPARE_ARGS:-}                    # more prepare options, e.g. --no-pairing
PAIRS_PER_QUESTION=${PAIRS_PER_QUESTION:-4}       # correct/wrong pairs kept per question
TRAIN_WRONG_EXAMPLES=${TRAIN_WRONG_EXAMPLES:-all}  # answered: train only on wrong segments of runs that boxed
                                                  # a (wrong) answer (prepare --wrong-examples); held out: all.
                                                  # Measured: a worse judge (docs/results.md)
SERVE_WAIT=${SERVE_WAIT:-1200}                    # seconds to wait for the server to load
STOP_AFTER=${STOP_AFTER:-}                        # stop after this step: generate, prepare, sft, grpo or eval
PYTHON=${PYTHON:-python3}
case "$TRAIN_WRONG_EXAMPLES" in all | answered) ;; *)
  echo "real_pipeline: TRAIN_WRONG_EXAMPLES must be all or answered, not '$TRAIN_WRONG_EXAMPLES'" >&2; exit 2 ;; esac
case " $PREPARE_ARGS " in *" --wrong-examples"*)
  echo "real_pipeline: give TRAIN_WRONG_EXAMPLES, not --wrong-examples in PREPARE_ARGS (the held-out side keeps all)" >&2
  exit 2 ;; esac
TIRGRPO=${TIRGRPO:-$PYTHON -m tirgrpo}
# The judge is evaluated with the room it was trained to write in: at 128 tokens a judge trained
# with 384 (JUDGE_START=base) is cut off and counted invalid on half its judgements.
if [ "$EVAL_MAX_NEW_TOKENS" = auto ]; then
  EVAL_MAX_NEW_TOKENS=$($PYTHON -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["rollout"]["max_new_tokens"])' \
    "$GRPO_CONFIG") || { echo "real_pipeline: cannot read rollout.max_new_tokens from GRPO_CONFIG=$GRPO_CONFIG" >&2; exit 2; }
fi

mkdir -p "$WORK/logs"
LOG=$WORK/pipeline.log
SERVER_PID=

log() { echo "[$(date -u +%FT%TZ)] $*" | tee -a "$LOG" >&2; }

stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    log "serve: stopping the server (pid $SERVER_PID)"
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
  rm -f "$WORK/serve.pid"
}
trap stop_server EXIT
trap 'exit 130' INT TERM  # so that the EXIT trap runs

# A server of an earlier run of this WORK that was killed before it could stop it (SIGKILL):
# stop it by its recorded pid, if that process is still a tirgrpo server.
if [ -f "$WORK/serve.pid" ]; then
  old=$(cat "$WORK/serve.pid")
  if grep -q "tirgrpo" "/proc/$old/cmdline" 2>/dev/null && grep -q "serve" "/proc/$old/cmdline" 2>/dev/null; then
    log "serve: stopping the server an earlier run left (pid $old)"
    kill "$old" 2>/dev/null || true
    sleep 5
  fi
  rm -f "$WORK/serve.pid"
fi

# stop_after NAME: end here (exit 0) when STOP_AFTER=NAME.
stop_after() {
  if [ "$STOP_AFTER" = "$1" ]; then log "real_pipeline: stopping after $1 (STOP_AFTER); run again to go on"; exit 0; fi
}

# step NAME DONE_FILE CMD...: run CMD (output to WORK/logs/NAME.log) unless DONE_FILE exists.
step() {
  local name=$1 done_file=$2; shift 2
  if [ -e "$done_file" ]; then
    log "$name: skipped ($done_file exists)"
    printf '{"step": "%s", "status": "skipped", "seconds": 0}\n' "$name" >> "$WORK/timings.jsonl"
    return 0
  fi
  log "$name: start: $*"
  local t0=$SECONDS rc=0
  "$@" > "$WORK/logs/$name.log" 2>&1 || rc=$?
  printf '{"step": "%s", "status": "%s", "seconds": %d}\n' "$name" "$([ $rc -eq 0 ] && echo ran || echo "failed $rc")" \
    "$((SECONDS - t0))" >> "$WORK/timings.jsonl"
  if [ $rc -ne 0 ]; then
    log "$name: FAILED (exit $rc) after $((SECONDS - t0)) s; the end of $WORK/logs/$name.log:"
    tail -n 20 "$WORK/logs/$name.log" >&2
    exit $rc
  fi
  log "$name: done in $((SECONDS - t0)) s"
}

log "real_pipeline: MODEL=$MODEL PROBLEMS=$PROBLEMS N_PROBLEMS=$N_PROBLEMS K=$K WORK=$WORK MAX_BATCH=$MAX_BATCH" \
    "CONCURRENCY=$CONCURRENCY GEN_SECONDS=$GEN_SECONDS MAX_TOKENS=$MAX_TOKENS MAX_TURNS=$MAX_TURNS SFT_STEPS=$SFT_STEPS" \
    "EVAL_SAMPLES=$EVAL_SAMPLES EVAL_MAX_NEW_TOKENS=$EVAL_MAX_NEW_TOKENS DEVICE=$DEVICE PORT=$PORT TRAIN_EXTRA=$TRAIN_EXTRA" \
    "TRAIN_WRONG_EXAMPLES=$TRAIN_WRONG_EXAMPLES"
[ -f "$PROBLEMS" ] || { log "PROBLEMS=$PROBLEMS: no such file"; exit 2; }

# ---------------------------------------------------------------- 1-2. serve and generate
T=$WORK/transcripts.jsonl
start_server() {
  log "serve: start: $TIRGRPO serve --model $MODEL (log $WORK/logs/serve.log)"
  $TIRGRPO serve --model "$MODEL" --served-model-name solver --port "$PORT" --device "$DEVICE" \
    --max-batch "$MAX_BATCH" --max-tokens "$MAX_TOKENS" --max-prompt-tokens 4096 --seed "$SEED" $SERVE_ARGS \
    > "$WORK/logs/serve.log" 2>&1 &
  SERVER_PID=$!
  echo "$SERVER_PID" > "$WORK/serve.pid"
  local t0=$SECONDS
  # The server prints one line once it answers (it binds the port before loading the model).
  until grep -q "tirgrpo serve: serving" "$WORK/logs/serve.log" 2>/dev/null; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      log "serve: FAILED: the server exited; the end of $WORK/logs/serve.log:"; tail -n 20 "$WORK/logs/serve.log" >&2
      exit 1
    fi
    if [ $((SECONDS - t0)) -gt "$SERVE_WAIT" ]; then log "serve: FAILED: not ready after $SERVE_WAIT s"; exit 1; fi
    sleep 2
  done
  log "serve: ready in $((SECONDS - t0)) s: $(grep "tirgrpo serve: serving" "$WORK/logs/serve.log")"
  printf '{"step": "serve", "status": "ran", "seconds": %d}\n' "$((SECONDS - t0))" >> "$WORK/timings.jsonl"
}

generate() {
  local cap=() rc=0
  # At GEN_SECONDS, SIGINT to generate alone (not to the code it runs), SIGKILL GEN_GRACE s
  # later. Every finished transcript is already on disk, one whole line each; on SIGINT generate
  # starts no new sample and writes those in flight that finish within GEN_GRACE, and the rest
  # are lost (a later run without generate.done samples them again).
  [ "$GEN_SECONDS" -gt 0 ] && cap=(timeout --foreground -s INT -k "$GEN_GRACE" "$GEN_SECONDS")
  "${cap[@]}" $TIRGRPO generate --problems "$PROBLEMS" --max-problems "$N_PROBLEMS" --base-url "http://127.0.0.1:$PORT/v1" \
    --model solver --chat-template "$MODEL" --samples-per-problem "$K" --concurrency "$CONCURRENCY" \
    --max-turns "$MAX_TURNS" --max-tokens "$MAX_TOKENS" --temperature "$TEMPERATURE" --seed "$SEED" --out "$T" \
    --no-progress $SANDBOX_ARGS $GENERATE_ARGS || rc=$?
  # A line cut by the SIGKILL: drop it (generate would too, on resume).
  if [ -s "$T" ] && [ -n "$(tail -c 1 "$T")" ]; then sed -i '$ d' "$T"; echo "dropped a cut-off last line"; fi
  case $rc in
    0) echo "complete" > "$WORK/generate.done" ;;
    124 | 137 | 130) echo "stopped at GEN_SECONDS=$GEN_SECONDS" > "$WORK/generate.done"
       echo "generation stopped after $GEN_SECONDS s (exit $rc); going on with what was written" ;;
    1) grep -q "samples failed (server errors)" "$WORK/logs/generate.log" || return 1
       echo "complete but for samples that failed on server errors" > "$WORK/generate.done"
       echo "some samples failed (see ${T%.jsonl}.errors.jsonl); going on with the rest" ;;
    *) return $rc ;;
  esac
}

# Before the model loads: the sandbox must run code here (generate refuses otherwise).
preflight() {
  printf 'import sympy\nprint(6 * 7)\n' > "$WORK/preflight.py"
  if ! $TIRGRPO sandbox run "$WORK/preflight.py" $SANDBOX_ARGS > "$WORK/logs/preflight.log" 2>&1 \
      || ! grep -q '42' "$WORK/logs/preflight.log"; then
    log "preflight: FAILED: the sandbox cannot run code here (see $WORK/logs/preflight.log and docs/security.md);" \
        "where the machine has no outside network, SANDBOX_ARGS=--allow-unsandboxed-network runs it with limits only"
    tail -n 20 "$WORK/logs/preflight.log" >&2
    exit 1
  fi
  log "preflight: the sandbox runs code ($(grep -o 'sandbox mode [a-z]*' "$WORK/logs/preflight.log" | head -n 1))"
}

if [ ! -e "$WORK/generate.done" ]; then
  preflight
  start_server
  gen_t0=$SECONDS
  step generate "$WORK/generate.done" generate
  echo $((SECONDS - gen_t0)) > "$WORK/generate.seconds"
  stop_server
else
  log "serve, generate: skipped ($WORK/generate.done: $(cat "$WORK/generate.done"))"
fi
if [ ! -s "$T" ]; then
  rm -f "$WORK/generate.done"  # so that the next run generates again
  log "generate wrote no transcript to $T (see $WORK/logs/generate.log)"; exit 1
fi
log "transcripts: $(wc -l < "$T") in $T"
stop_after generate

# ---------------------------------------------------------------- 3. the solver's report
step solver "$WORK/solver.json" $PYTHON -m tirgrpo.eval.solver "$T" --tokenizer "$MODEL" --out "$WORK/solver.json" \
  --generation-seconds "$(cat "$WORK/generate.seconds" 2>/dev/null || echo 0)"

# ---------------------------------------------------------------- 4. split by problem, prepare
# shellcheck disable=SC2086  # TRAIN_EXTRA is a list of files
step split "$WORK/transcripts-heldout.jsonl" $TIRGRPO data split-transcripts --input "$T" \
  --train "$WORK/transcripts-train.jsonl" --heldout "$WORK/transcripts-heldout.jsonl" \
  --heldout-fraction "$HELDOUT_FRACTION" --seed "$SEED" ${TRAIN_EXTRA:+--extra-train $TRAIN_EXTRA}
# Each side whole (--eval-fraction 0: every example lands in OUT/train.jsonl).
# The training side's examples are made once: a WORK prepared with other wrong examples is refused
# (a new WORK, a copy of the generation's files, trains that variant beside this one).
made=$($PYTHON -c 'import json, sys; print(json.load(open(sys.argv[1]))["settings"].get("wrong_examples", "all"))' \
  "$WORK/prepared-train/stats.json" 2>/dev/null) || made=
if [ -n "$made" ] && [ "$made" != "$TRAIN_WRONG_EXAMPLES" ]; then
  log "real_pipeline: $WORK/prepared-train was made with wrong examples '$made', not TRAIN_WRONG_EXAMPLES=$TRAIN_WRONG_EXAMPLES;" \
      "use a new WORK (a copy of generate.done and transcripts.jsonl) for that variant"
  exit 2
fi
PAIRING="--pairs-per-question $PAIRS_PER_QUESTION"
case " $PREPARE_ARGS " in *" --no-pairing "*) PAIRING= ;; esac  # every segment: no pairs to count
for side in train heldout; do
  wrong=all; [ "$side" = train ] && wrong=$TRAIN_WRONG_EXAMPLES
  # shellcheck disable=SC2086  # PAIRING and PREPARE_ARGS are lists of options
  step "prepare-$side" "$WORK/prepared-$side/stats.json" $TIRGRPO prepare --input "$WORK/transcripts-$side.jsonl" \
    --out "$WORK/prepared-$side" --tokenizer "$MODEL" --judge-targets --eval-fraction 0 --seed "$SEED" $PAIRING \
    --wrong-examples "$wrong" $PREPARE_ARGS
done
TRAIN=$WORK/prepared-train/train.jsonl
HELDOUT=$WORK/prepared-heldout/train.jsonl
log "judge examples: $(wc -l < "$TRAIN") training, $(wc -l < "$HELDOUT") held out"
stop_after prepare

# ---------------------------------------------------------------- 5. the judge
if [ "$JUDGE_START" = sft ] && [ "$SFT_STEPS" = auto ]; then
  rows=$(wc -l < "$TRAIN")
  SFT_STEPS=$(( (SFT_EPOCHS * rows + SFT_BATCH - 1) / SFT_BATCH ))
  [ "$SFT_STEPS" -lt 10 ] && SFT_STEPS=10
  [ "$SFT_STEPS" -gt 200 ] && SFT_STEPS=200
  log "sft: $SFT_STEPS steps (SFT_EPOCHS=$SFT_EPOCHS passes over $rows examples, $SFT_BATCH a step, 10..200)"
fi
if [ "$JUDGE_START" = sft ]; then
  # shellcheck disable=SC2086  # SFT_SET is a list of options
  step sft "$WORK/judge/summary.json" $TIRGRPO sft --config "$SFT_CONFIG" --overwrite --set model.name_or_path="$MODEL" \
    --set data.train="$TRAIN" --set run.out_dir="$WORK/judge" --set optim.total_steps="$SFT_STEPS" \
    --set batch_size="$SFT_BATCH" --set run.seed="$SEED" --set system.device="$DEVICE" $SFT_SET
  stop_after sft
  JUDGE=$WORK/judge
  start=(--set model.init_from="$WORK/judge")
  grpo_dir=$WORK/judge-grpo
else  # GRPO alone from the untrained MODEL, in a folder of its own so the two starts never mix
  JUDGE=$MODEL
  start=()
  grpo_dir=$WORK/judge-base-grpo
  [ "$GRPO_STEPS" -gt 0 ] || { log "real_pipeline: JUDGE_START=base needs GRPO_STEPS > 0"; exit 2; }
fi
if [ "$GRPO_STEPS" -gt 0 ]; then
  # shellcheck disable=SC2086  # GRPO_SET is a list of options
  step grpo "$grpo_dir/summary.json" $TIRGRPO train --config "$GRPO_CONFIG" --overwrite \
    --set model.name_or_path="$MODEL" "${start[@]}" --set data.train="$TRAIN" \
    --set run.out_dir="$grpo_dir" --set optim.total_steps="$GRPO_STEPS" --set run.seed="$SEED" \
    --set system.device="$DEVICE" $GRPO_SET
  JUDGE=$grpo_dir
fi
stop_after grpo

# ---------------------------------------------------------------- 6. evaluation on held-out problems
# An evaluation belongs to one model and one budget (WORK/NAME.model: the model on its first
# line, the budget on its second): it runs again
# when it was made for another model (GRPO_STEPS changed between runs), with another
# EVAL_MAX_NEW_TOKENS or EVAL_SAMPLES, or before that model was trained again.
judge_eval() {  # judge_eval NAME MODEL ARGS...: tirgrpo eval with the protocol's settings
  local name=$1 model=$2; shift 2
  local stamp
  stamp=$(printf '%s\nmax_new_tokens=%s samples=%s' "$model" "$EVAL_MAX_NEW_TOKENS" "$EVAL_SAMPLES")
  if [ -f "$WORK/$name.json" ] && { [ "$(cat "$WORK/$name.model" 2>/dev/null)" != "$stamp" ] ||
                                    [ "$model/summary.json" -nt "$WORK/$name.json" ]; }; then
    log "$name: made for another model or budget than $model (max_new_tokens=$EVAL_MAX_NEW_TOKENS, samples=$EVAL_SAMPLES); evaluating again"
    rm -f "$WORK/$name.json" "$WORK/$name.md"
  fi
  step "$name" "$WORK/$name.json" $TIRGRPO eval --model "$model" --samples "$EVAL_SAMPLES" \
    --max-new-tokens "$EVAL_MAX_NEW_TOKENS" --batch-size "$EVAL_BATCH" --device "$DEVICE" --seed "$SEED" \
    --out "$WORK/$name.json" "$@"
  echo "$stamp" > "$WORK/$name.model"
}
judge_eval eval-judge "$JUDGE" --data "$HELDOUT"
[ "$JUDGE_START" = sft ] && [ "$JUDGE" != "$WORK/judge" ] && judge_eval eval-sft "$WORK/judge" --data "$HELDOUT"
[ "$EVAL_BASE" = 1 ] && judge_eval eval-base "$MODEL" --data "$HELDOUT"
# --no-greedy: selection reads the K sampled judgements only; the greedy one would cost a pass
judge_eval selection "$JUDGE" --transcripts "$WORK/transcripts-heldout.jsonl" --selection --no-greedy
stop_after eval

# ---------------------------------------------------------------- 7. summary
log "summary: $PYTHON -m tirgrpo.eval.pipeline $WORK"
$PYTHON -m tirgrpo.eval.pipeline "$WORK"
cat "$WORK/summary.md"
log "real_pipeline: done; everything is under $WORK (summary: $WORK/summary.md)"
