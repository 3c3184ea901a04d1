#!/usr/bin/env bash
# Builds CoreDNS with llq and the llq tool, starts CoreDNS with
# bench/soak.Corefile and runs `llq soak` (30 minutes, 10,000 LLQs, a zone
# change every second, client churn, 5 % loss each way unless flags say
# otherwise). Exits non-zero if a view diverged or an LLQ leaked.
#
#   bench/soak.sh                    # the full soak
#   bench/soak.sh -duration 2m       # any llq soak flags
set -euo pipefail
cd "$(dirname "$0")/.."
out=${BENCH_OUT:-/tmp/llq-bench}
. bench/start.sh soak.Corefile

if [ $# -eq 0 ]; then
	set -- -duration 30m -clients 1000 -per-client 10 -names 100 -loss 0.05 -churn 100ms
fi
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(go version | cut -d' ' -f3-)"
echo "command: llq soak @127.0.0.1:2352 $* -dns 127.0.0.1:2053 -zone $out/db.example.org -metrics http://127.0.0.1:9253/metrics"
"$out/llq" soak @127.0.0.1:2352 "$@" -dns 127.0.0.1:2053 -zone "$out/db.example.org" -metrics http://127.0.0.1:9253/metrics
