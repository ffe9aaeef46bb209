#!/bin/bash
# Seed 000 (shared/seeds/000_1b08bb90f00767da.txt), "Practical Example: The OOM
# Victim Finder", verbatim from its `#!/bin/bash` line to `head -n 15` (the seed's
# text runs on after it on the same line). The peer of `oomtrace rank` in
# `cargo xtask bench --only rank` and in README.md; these four lines are ours.
# rank_oom.sh - See which processes the kernel wants to kill first
printf "%-10s %-10s %-10s %-20s\n" "PID" "Score" "Adj" "Command"
echo "---------------------------------------------------------"
for pid in /proc/[0-9]*; do
PID=$(basename $pid)
if [ -f "$pid/oom_score" ]; then
SCORE=$(cat "$pid/oom_score")
ADJ=$(cat "$pid/oom_score_adj")
CMD=$(cat "$pid/comm")
if [ "$SCORE" -gt 0 ]; then
printf "%-10s %-10s %-10s %-20s\n" "$PID" "$SCORE" "$ADJ" "$CMD"
fi
fi
done | sort -k2 -nr | head -n 15
