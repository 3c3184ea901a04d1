#!/usr/bin/env bash
# Builds CoreDNS with llq and the llq tool, starts CoreDNS with bench/Corefile
# on loopback, runs `llq bench` with the arguments given (defaults below) and
# stops CoreDNS. The summary table is ready to paste into BENCHMARKS.md.
#
#   bench/run.sh                         # 100,000 LLQs, zone changes, latency
#   bench/run.sh -llqs 20000 -loss 0.05  # any llq bench flags
set -euo pipefail
cd "$(dirname "$0")/.."
# On loopback IPv4 the bench's endpoints share sockets (IP_PKTINFO), 250
# addresses to one; with -share=false each needs a file descriptor.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
out=${BENCH_OUT:-/tmp/llq-bench}
. bench/start.sh Corefile

if [ $# -eq 0 ]; then
	set -- -llqs 100000 -sockets 1001 -addrs 250 -names 1000 -window 4 -hold 10s -change-every 500ms
fi
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(go version | cut -d' ' -f3-)"
echo "command: llq bench @127.0.0.1:5352 $* -zone $out/db.example.org -dns 127.0.0.1:1053 -pid (coredns)"
"$out/llq" bench @127.0.0.1:5352 "$@" -zone "$out/db.example.org" -dns 127.0.0.1:1053 -pid "$pid"
