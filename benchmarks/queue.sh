# A resumable job queue worked off by lanes of one thread each (two single-threaded runs use 2 cores better
# than one run on two threads). Sourced by the experiment scripts (organic_comparisons.sh, e0_protocol.sh),
# which define:
#   job N      run job N (return 3 for an unknown N)
#   JOBS       the number of jobs
#   QUEUE      the folder of claims (a lane claims job n by creating $QUEUE/n)
#   LOG        the log prefix: $LOG.log (collect), $LOG-a.log and $LOG-b.log (the lanes)
#   collect    rewrite the result tables from the finished runs (trains nothing)
# and then call `queue_main "$0" "${1:-start}"`. The scripts' jobs keep finished methods
# (runs/<method>/method.json) and continue an interrupted one from its checkpoint, so starting again
# after a stop continues where it stopped.

lane() {
    mkdir -p "$QUEUE"
    for ((n = 1; n <= JOBS; n++)); do
        if mkdir "$QUEUE/$n" 2>/dev/null; then
            echo "== job $n ($(date -u +%H:%M))"
            job "$n" || echo "== job $n failed"
        fi
    done
}

# finished <results folder> <label>...: the labels whose run finished (runs/<slug>/method.json)
finished() {
    local folder=$1 label slug
    shift
    for label in "$@"; do
        slug=$(echo "$label" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9-]+/_/g; s/^_+|_+$//g')
        if [[ -f $folder/runs/$slug/method.json ]]; then echo "$label"; fi
    done
}

# table <results folder> <script and flags...> -- <labels...>: rewrite that folder's tables from its finished
# runs only (nothing is trained here)
table() {
    local folder=$1 args=() labels
    shift
    while [[ $1 != -- ]]; do args+=("$1"); shift; done
    shift
    mapfile -t labels < <(finished "$folder" "$@")
    if ((${#labels[@]})); then "${args[@]}" --methods "${labels[@]}"; fi
}

queue_main() {
    local script=$1 command=$2
    case "$command" in
        start)
            rm -rf "$QUEUE"
            mkdir -p "$(dirname "$LOG")"
            nohup bash -c "bash '$script' lane > $LOG-a.log 2>&1 &
                           bash '$script' lane > $LOG-b.log 2>&1 &
                           wait; bash '$script' collect" > "$LOG.log" 2>&1 &
            echo "lanes started; logs: $LOG{,-a,-b}.log" ;;
        lane) lane ;;
        collect) collect ;;
        *) echo "usage: $script [start|lane|collect]" >&2; return 2 ;;
    esac
}
