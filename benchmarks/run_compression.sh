#!/usr/bin/env bash
# The compression grid recorded in benchmarks/results/compression.md: token pruning (PrunePert) at
# keep 0.75/0.5/0.25 from layer 2 and keep 0.5 from layers 1 and 3, the exact vs the diagonal
# estimator, AHP at three levels, dynamic int8 PTQ, and ONNX Runtime latency / throughput. Every
# model gets the same fine-tuning budget (same subset, steps and learning rates).
#
# Usage (repo root): bash benchmarks/run_compression.sh DATASET [STEP ...]
#   DATASET: imdb (512 tokens) or tfns (64 tokens); STEPs default to the whole grid in this order:
#   teacher l2-k0.5 l2-k0.5-diag l2-k0.25 ahp l2-k0.75 l1-k0.5 l3-k0.5 latency report
#   (optional, not in the default list: l2-k0.5-from-teacher, pruning trained on top of the
#   fine-tuned teacher, i.e. twice the budget, and teacher-continued, its unpruned counterpart)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
M=$($PY -c "from edgekd.assets import asset_path; print(asset_path('minilm'))")
OUT=${OUT:-/tmp/edgekd_prune_runs}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
dataset=${1:?usage: run_compression.sh imdb|tfns [STEP ...]}
shift
steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(teacher l2-k0.5 l2-k0.5-diag l2-k0.25 ahp l2-k0.75 l1-k0.5 l3-k0.5 latency report)

case $dataset in
  imdb)  # 1,200 train reviews (class-balanced), 1,000 test reviews, 512 tokens, 1 epoch = 150 steps
    T="--train-n 1200 --test-n 1000 --max-len 512 --epochs 1 --batch 8"
    AHP="--dev-n 128 --test-n 1000 --max-len 512"
    LAT="--seq 512 --repeats-b1 20 --repeats-b32 5 --eval-n 1000 --eval-max-len 512" ;;
  tfns)  # all 9,543 train tweets, all 2,388 valid tweets, 64 tokens, 1 epoch = 597 steps
    T="--train-n 0 --test-n 0 --max-len 64 --epochs 1 --batch 16"
    AHP="--dev-n 256 --test-n 0 --max-len 64"
    LAT="--seq 64 --repeats-b1 50 --repeats-b32 20 --eval-n 2388 --eval-max-len 64" ;;
  *) echo "unknown dataset $dataset" >&2; exit 2 ;;
esac
R=benchmarks/results/compression_$dataset.jsonl
B="$PY benchmarks/bench_prune.py --dataset $dataset --out $OUT/$dataset --results $R --threads 2"
T="--base $M $T --lr 1e-4 --head-lr 1e-3 --num-samples 200 --sigma 0.2"
MODELS=(teacher prune-l2-k0.5 prune-l2-k0.5-diag prune-l2-k0.25 prune-l2-k0.75 prune-l1-k0.5 prune-l3-k0.5
        prune-l2-k0.5-from-teacher ahp-12 ahp-24 ahp-36)

for step in "${steps[@]}"; do
  echo "== $dataset: $step ($(date -u +%H:%M:%S))"
  case $step in
    teacher) $B train $T --name teacher ;;
    l2-k0.5-diag) $B train $T --name prune-l2-k0.5-diag --prune-layer 2 --keep 0.5 --estimator diagonal ;;
    teacher-continued)  # the fine-tuned teacher trained on the same budget again, unpruned: the fair
      # reference of l2-k0.5-from-teacher (both have seen twice the budget)
      $B train ${T/--base $M/--base $OUT/$dataset/teacher} --name teacher-continued ;;
    l2-k0.5-from-teacher)  # two stages: the fine-tuned teacher, then the same budget again with pruning
      $B train ${T/--base $M/--base $OUT/$dataset/teacher} --name prune-l2-k0.5-from-teacher --prune-layer 2 --keep 0.5 ;;
    l[0-9]-k*) layer=${step:1:1}; keep=${step#*-k}; $B train $T --name "prune-$step" --prune-layer "$layer" --keep "$keep" ;;
    ahp) $B ahp --teacher teacher --heads 12 24 36 $AHP ;;
    latency)  # the models trained so far; the first (teacher) is the reference of the speed-ups
      have=(); for m in "${MODELS[@]}"; do [[ -d $OUT/$dataset/$m ]] && have+=("$m"); done
      $B latency --models "${have[@]}" --int8 --int8-only teacher prune-l2-k0.5 $LAT ;;
    report) $B report > "benchmarks/results/compression_$dataset.table.md" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
