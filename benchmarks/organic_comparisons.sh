#!/usr/bin/env bash
# The papers' transfer experiment from mace-organic-xtb (issues 12 and 15): a queue of jobs worked
# off by two lanes of one thread each (benchmarks/queue.sh), then one pass that rewrites every results
# table from the finished runs.
#
# Usage: [SCHEDULE=e50|papers] bash benchmarks/organic_comparisons.sh [start|lane|collect]
#   SCHEDULE=e50 (default): 50 epochs in float32, results in <folder>-e50-float32
#   SCHEDULE=papers:        the papers' 500 epochs in float64, results in <folder>-full; the same jobs
#   start (default): both lanes in the background, then collect; logs in
#                    benchmarks/results/organic-comparisons-$SCHEDULE{,-a,-b}.log (not committed)
#   lane:            work off unclaimed jobs in this shell
#   collect:         rewrite the results tables from the finished runs (trains nothing)
#
# Resumable: rmd17.py / bpa3.py keep finished methods (runs/<method>/method.json) and continue an
# interrupted one from its checkpoint, so starting again after a stop continues where it stopped.
# A lane claims job n by creating $QUEUE/n (one queue per schedule); `start` clears the claims.
#
# The e50 schedule fits the CPU budget; benchmarks/README.md gives what it costs against the
# papers' schedule on ethanol, and the papers' schedule's estimated time. Jobs run in order of
# what the issues need: aspirin with every method (retention, MD stability, mmea-paper + replay),
# ethanol, two more molecules, the aspirin seeds, the MMEA ablations, then 3BPA and salicylic acid.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export PYTHONPATH=$PWD  # this checkout's peft_equi, whichever checkout the venv was installed from
SCHEDULE=${SCHEDULE:-e50}
QUEUE=benchmarks/results/.organic-queue-$SCHEDULE
PAPERS=(--model benchmarks/models/mace-organic-xtb.pt --threads 1)
# 3BPA has 450 training structures, 90 steps an epoch: a tenth of the epochs takes as many steps
case $SCHEDULE in
    e50) COMMON=("${PAPERS[@]}" --epochs 50 --dtype float32) MODE=e50-float32 BPA=(--epochs 5) ;;
    papers) COMMON=("${PAPERS[@]}") MODE=full BPA=(--epochs 50 --dtype float64) ;;
    *) echo "SCHEDULE must be e50 or papers, not '$SCHEDULE'" >&2; exit 2 ;;
esac
BPA_MODE=e${BPA[1]}-${BPA[3]:-float32}
CORE=(full mace-lora elora-paper mmea-paper)
ALL=(full readout-only "freeze 1" "freeze 5" mace-lora elora-paper mmea-paper "mmea-paper r32" bitfit film)
VARIANTS=("no activation" "no input-head reuse" "no scalar modulation" "no higher-order modulation"
          "shared higher-order gains" "conventional adapter (not equivariant)")
SAMPLES=benchmarks/data/organic-xtb-samples
ASPIRIN=(--molecule aspirin "${COMMON[@]}" --retain "$SAMPLES/test-100.extxyz"
         --md-structure benchmarks/data/aspirin-etkdg.xyz)
REPLAY=(--replay "$SAMPLES/train-251.extxyz" --replay-methods mmea-paper)
RMD17=($PY benchmarks/rmd17.py)

job() {
    case $1 in
        1) "${RMD17[@]}" "${ASPIRIN[@]}" --methods full ;;
        2) "${RMD17[@]}" "${ASPIRIN[@]}" --methods mmea-paper "${REPLAY[@]}" ;;
        3) "${RMD17[@]}" --molecule ethanol "${COMMON[@]}" --methods "${CORE[@]}" ;;
        4) "${RMD17[@]}" "${ASPIRIN[@]}" --methods elora-paper ;;
        5) "${RMD17[@]}" "${ASPIRIN[@]}" --methods mace-lora ;;
        6) "${RMD17[@]}" "${ASPIRIN[@]}" --methods readout-only ;;
        7) "${RMD17[@]}" "${ASPIRIN[@]}" --methods "freeze 1" ;;
        8) "${RMD17[@]}" "${ASPIRIN[@]}" --methods "freeze 5" ;;
        9) "${RMD17[@]}" "${ASPIRIN[@]}" --methods "mmea-paper r32" ;;
        10) "${RMD17[@]}" "${ASPIRIN[@]}" --methods bitfit ;;
        11) "${RMD17[@]}" "${ASPIRIN[@]}" --methods film ;;
        12) "${RMD17[@]}" --molecule malonaldehyde "${COMMON[@]}" --methods "${CORE[@]}" ;;
        13) "${RMD17[@]}" --molecule toluene "${COMMON[@]}" --methods "${CORE[@]}" ;;
        14 | 15) "${RMD17[@]}" --molecule aspirin --seed $(($1 - 13)) "${COMMON[@]}" --methods full mmea-paper ;;
        16 | 17 | 18 | 19 | 20 | 21)
            "${RMD17[@]}" --molecule aspirin --ablations "${COMMON[@]}" --methods "${VARIANTS[$1 - 16]}" ;;
        22) "${RMD17[@]}" --molecule aspirin --ablations "${COMMON[@]}" --methods mmea-paper "readout only (baseline)" ;;
        23) $PY benchmarks/bpa3.py "${PAPERS[@]}" "${BPA[@]}" --methods full elora-paper mmea-paper ;;
        24) "${RMD17[@]}" --molecule salicylic "${COMMON[@]}" --methods "${CORE[@]}" ;;
        *) return 3 ;;
    esac
}
JOBS=24

collect() {
    local out=benchmarks/results/rmd17/mace-organic-xtb replay=()
    if [[ -f $out-aspirin-$MODE/runs/mmea-paper_replay/method.json ]]; then replay=("${REPLAY[@]}"); fi
    table "$out-aspirin-$MODE" "${RMD17[@]}" "${ASPIRIN[@]}" "${replay[@]}" -- "${ALL[@]}"
    table "$out-aspirin-$MODE-ablations" "${RMD17[@]}" --molecule aspirin --ablations "${COMMON[@]}" \
        -- mmea-paper "${VARIANTS[@]}" "readout only (baseline)"
    for molecule in ethanol malonaldehyde toluene salicylic; do
        table "$out-$molecule-$MODE" "${RMD17[@]}" --molecule "$molecule" "${COMMON[@]}" -- "${CORE[@]}"
    done
    for seed in 1 2; do
        table "$out-aspirin-$MODE-seed$seed" "${RMD17[@]}" --molecule aspirin --seed "$seed" "${COMMON[@]}" \
            -- full mmea-paper
    done
    table "benchmarks/results/3bpa/mace-organic-xtb-$BPA_MODE" $PY benchmarks/bpa3.py "${PAPERS[@]}" "${BPA[@]}" \
        -- full elora-paper mmea-paper
    $PY benchmarks/organic_summary.py --mode "$MODE" --bpa-mode "$BPA_MODE"
}

LOG=benchmarks/results/organic-comparisons-$SCHEDULE
# shellcheck source=benchmarks/queue.sh
source benchmarks/queue.sh
queue_main "$0" "${1:-start}"
exit  # the script can be edited while lanes run (bash reads it as it goes)
