#!/usr/bin/env bash
# DNS Push benchmark: builds CoreDNS with llq, the llq tool and the bare Go
# TLS server bench/push-baseline, makes a certificate chain, starts CoreDNS
# with bench/push.Corefile and the baseline server with the same
# certificate, runs `llq bench push` (sessions and RSS, fan-out, SUBSCRIBE
# rate, each against its baseline) and stops both servers. The summary
# table is ready to paste into BENCHMARKS.md.
#
#   bench/push.sh                              # 19,000 sessions x 10 subscriptions
#   bench/push.sh -sessions 2000 -rounds 3     # any llq bench push flags
#
# The open-file limit is 20,000 per process here: each server holds its
# ~19,000 connections, the bench holds llq's, and a child of the bench
# holds the baseline's.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
out=${BENCH_OUT:-/tmp/llq-bench}
mkdir -p "$out"
. bench/push-cert.sh
go build -o "$out/push-baseline" ./bench/push-baseline
. bench/start.sh push.Corefile
"$out/push-baseline" -listen 127.0.0.1:8854 -cert "$out/cert.pem" -key "$out/key.pem" 2>"$out/push-baseline.log" &
bpid=$!
trap 'kill $pid $bpid 2>/dev/null; wait $pid $bpid 2>/dev/null || true' EXIT
for _ in $(seq 50); do
	grep -q "DNS Push (TLS) listener" "$out/push.Corefile.log" && grep -q listening "$out/push-baseline.log" && break
	sleep 0.1
done

if [ $# -eq 0 ]; then
	set -- -sessions 19000 -subs 10 -names 1000 -rounds 5
fi
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(go version | cut -d' ' -f3-), open files $(ulimit -n)"
echo "load before: $(uptime | sed 's/.*load average: //')"
echo "command: llq bench push @127.0.0.1:8853 $* -ca $out/ca.pem -zone $out/db.example.org -dns 127.0.0.1:1053 -pid (coredns) -baseline 127.0.0.1:8854 -baseline-pid (push-baseline)"
"$out/llq" bench push @127.0.0.1:8853 "$@" -ca "$out/ca.pem" -zone "$out/db.example.org" -dns 127.0.0.1:1053 \
	-pid "$pid" -baseline 127.0.0.1:8854 -baseline-pid "$bpid"
echo "load after: $(uptime | sed 's/.*load average: //')"
