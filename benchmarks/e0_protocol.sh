#!/usr/bin/env bash
# The papers' result, explained (issue 23): rMD17 from mace-organic-xtb with the engine's two per-element
# energy modes side by side, `--e0s fit` (the residuals after the foundation's prediction, on top of it) and
# `--e0s average` (mace's --E0s=average, as the MMEA/ELoRA reference code: raw energies, replacing the
# foundation's atomic energies). Everything goes to benchmarks/results/e0-protocol/<molecule>-<schedule>-<e0s>:
#   breadth: five molecules x full, mace-lora, elora-paper, mmea-paper x both modes, 50 epochs float32;
#   depth:   ethanol and aspirin x full, elora-paper, mmea-paper x both modes on the papers' schedule
#            (500 epochs, stage two from 400) in $DEPTH_DTYPE (float32 unless float64 is asked for: ethanol's
#            `full` runs on seeds 0-2 tell whether float32 gives the float64 errors, see e0_summary.py);
#   aspirin: the MMEA ablation "no scalar modulation" in both modes (50 epochs float32).
# A queue worked off by two single-thread lanes (benchmarks/queue.sh), resumable across sessions; `collect`
# writes summary.{json,md} (benchmarks/e0_summary.py).
#
# Usage: bash benchmarks/e0_protocol.sh [start|lane|collect]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export PYTHONPATH=$PWD  # this checkout's peft_equi, whichever checkout the venv was installed from
DEPTH_DTYPE=${DEPTH_DTYPE:-float32}
OUT=benchmarks/results/e0-protocol
QUEUE=benchmarks/results/.e0-protocol-queue
RMD17=($PY benchmarks/rmd17.py --model benchmarks/models/mace-organic-xtb.pt --threads 1)
CORE=(full mace-lora elora-paper mmea-paper)
DEPTH=(full elora-paper mmea-paper)
MOLECULES=(ethanol aspirin malonaldehyde toluene salicylic)

# breadth <molecule> <e0s>: the core methods at 50 epochs in float32
breadth() {
    "${RMD17[@]}" --molecule "$1" --e0s "$2" --epochs 50 --dtype float32 --methods "${CORE[@]}" \
        --output "$OUT/$1-e50-float32-$2"
}

# depth <molecule> <e0s> <method> [seed]: the papers' schedule, 500 epochs with stage two from 400
depth() {
    local seed=${4:-0} suffix=""
    if ((seed)); then suffix=-seed$seed; fi
    "${RMD17[@]}" --molecule "$1" --e0s "$2" --epochs 500 --dtype "$DEPTH_DTYPE" --seed "$seed" --methods "$3" \
        --output "$OUT/$1-full-$DEPTH_DTYPE-$2$suffix"
}

ablation() {
    "${RMD17[@]}" --molecule aspirin --ablations --e0s "$1" --epochs 50 --dtype float32 \
        --methods "no scalar modulation" --output "$OUT/aspirin-e50-float32-$1-ablations"
}

# jobs in the order the question needs them: ethanol both ways (it also settles float32), then the breadth
# table, the ablation, ethanol's seeds, and the long aspirin runs last
JOB_LIST=(
    "breadth ethanol fit" "breadth ethanol average"
    "depth ethanol fit full" "depth ethanol average full"
    "depth ethanol fit elora-paper" "depth ethanol average elora-paper"
    "depth ethanol fit mmea-paper" "depth ethanol average mmea-paper"
    "breadth aspirin fit" "breadth aspirin average"
    "breadth malonaldehyde fit" "breadth malonaldehyde average"
    "breadth toluene fit" "breadth toluene average"
    "breadth salicylic fit" "breadth salicylic average"
    "ablation average" "ablation fit"
    "depth ethanol fit full 1" "depth ethanol fit full 2"
    "depth aspirin fit full" "depth aspirin average full"
    "depth aspirin fit elora-paper" "depth aspirin average elora-paper"
    "depth aspirin fit mmea-paper" "depth aspirin average mmea-paper"
)
JOBS=${#JOB_LIST[@]}

job() {
    (($1 >= 1 && $1 <= JOBS)) || return 3
    # shellcheck disable=SC2086  # the entry is a function name and its words
    ${JOB_LIST[$1 - 1]}
}

# the depth folders hold one method per job (each run rewrites the folder's results.json with its own
# method): their tables are rewritten from every finished run before the summary reads them
collect() {
    local mode molecule seed suffix
    for molecule in ethanol aspirin; do
        for mode in fit average; do
            for seed in 0 1 2; do
                suffix=""
                if ((seed)); then suffix=-seed$seed; fi
                table "$OUT/$molecule-full-$DEPTH_DTYPE-$mode$suffix" "${RMD17[@]}" --molecule "$molecule" \
                    --e0s "$mode" --epochs 500 --dtype "$DEPTH_DTYPE" --seed "$seed" \
                    --output "$OUT/$molecule-full-$DEPTH_DTYPE-$mode$suffix" -- "${DEPTH[@]}"
            done
        done
    done
    $PY benchmarks/e0_summary.py --folder "$OUT"
}

LOG=benchmarks/results/e0-protocol-queue
# shellcheck source=benchmarks/queue.sh
source benchmarks/queue.sh
queue_main "$0" "${1:-start}"
exit  # the script can be edited while lanes run (bash reads it as it goes)
