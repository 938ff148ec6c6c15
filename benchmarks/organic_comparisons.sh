#!/usr/bin/env bash
# The papers' transfer experiment from mace-organic-xtb (issues 12 and 15), as two lanes of one
# thread each (two single-threaded runs use 2 cores better than one run on two threads).
#
# Usage: bash benchmarks/organic_comparisons.sh [a|b|both]    (default: both, in the background)
#
# Resumable: rmd17.py / bpa3.py keep finished methods and continue an interrupted one from its
# checkpoint, so rerunning this script after a stop continues where it stopped.  Logs go to
# benchmarks/results/organic-comparisons-<lane>.log (not committed).
#
# Lane a: ethanol on the papers' full schedule (500 epochs, float64) for the core methods, the
#         reference that shows whether the shorter schedule below converges to the same errors;
#         then the other aspirin seeds.
# Lane b: the shorter schedule (150 epochs, float32): ethanol (core methods), aspirin (every
#         method, with retention, MD stability and mmea-paper + pseudo-label replay), the
#         MMEA ablations on aspirin, three more molecules (core methods), 3BPA (50 epochs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
MODEL=benchmarks/models/mace-organic-xtb.pt
COMMON=(--model "$MODEL" --threads 1)
SHORT=(--epochs 150 --dtype float32)
CORE=(full mace-lora elora-paper mmea-paper)
ALL=(full readout-only "freeze 1" "freeze 5" mace-lora elora-paper mmea-paper "mmea-paper r32" bitfit film)
SAMPLES=benchmarks/data/organic-xtb-samples
ASPIRIN_CHECKS=(--retain "$SAMPLES/test-100.extxyz" --md-structure benchmarks/data/aspirin-etkdg.xyz
                --replay "$SAMPLES/train-251.extxyz" --replay-methods mmea-paper)

lane_a() {
    $PY benchmarks/rmd17.py --molecule ethanol "${COMMON[@]}" --methods "${CORE[@]}"
    for seed in 1 2; do
        $PY benchmarks/rmd17.py --molecule aspirin --seed "$seed" "${COMMON[@]}" "${SHORT[@]}" --methods "${CORE[@]}"
    done
}

lane_b() {
    $PY benchmarks/rmd17.py --molecule ethanol "${COMMON[@]}" "${SHORT[@]}" --methods "${CORE[@]}"
    $PY benchmarks/rmd17.py --molecule aspirin "${COMMON[@]}" "${SHORT[@]}" --methods "${ALL[@]}" "${ASPIRIN_CHECKS[@]}"
    $PY benchmarks/rmd17.py --molecule aspirin --ablations "${COMMON[@]}" "${SHORT[@]}"
    for molecule in malonaldehyde uracil toluene; do
        $PY benchmarks/rmd17.py --molecule "$molecule" "${COMMON[@]}" "${SHORT[@]}" --methods "${CORE[@]}"
    done
    # 500 training structures: 100 steps an epoch, so 50 epochs take as many steps as rMD17's 500
    $PY benchmarks/bpa3.py "${COMMON[@]}" --epochs 50 --dtype float32 --methods full elora-paper mmea-paper
}

mkdir -p benchmarks/results
case "${1:-both}" in
    a) lane_a ;;
    b) lane_b ;;
    both)
        nohup bash "$0" a > benchmarks/results/organic-comparisons-a.log 2>&1 &
        nohup bash "$0" b > benchmarks/results/organic-comparisons-b.log 2>&1 &
        echo "lanes started; logs: benchmarks/results/organic-comparisons-{a,b}.log" ;;
    *) echo "usage: $0 [a|b|both]" >&2; exit 2 ;;
esac
