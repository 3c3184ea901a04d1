#!/usr/bin/env bash
# Ordinary-query throughput of CoreDNS with llq against the very same CoreDNS
# without llq (dnsperf), and completed LLQ setups per second against the
# queries per second of the same server (llq bench), all in one run.
#
# The server is pinned to CPU 0 (GOMAXPROCS=1) and the load generators to
# CPU 1, so that on a 2-core machine they do not steal from each other and
# each figure is the server's, on one core. Rounds alternate between the
# variants so that drift on the machine hits both alike.
#
#   bench/throughput.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
secs=${2:-8}
out=${BENCH_OUT:-/tmp/llq-bench}
mkdir -p "$out"
command -v dnsperf >/dev/null || { apt-get update && apt-get install -y dnsperf; }
go build -o "$out/coredns" ./cmd/coredns
go build -o "$out/llq" ./cmd/llq

names=1000
{
	printf '$ORIGIN example.org.\n$TTL 3600\n@ IN SOA ns1 hostmaster 1 7200 3600 1209600 3600\n  IN NS ns1\nns1 IN A 127.0.0.1\n'
	for i in $(seq 0 $((names - 1))); do printf 'n%d IN A 192.0.2.%d\n' "$i" $((i % 250 + 1)); done
} >"$out/tp.example.org"
for i in $(seq 0 $((names - 1))); do printf 'n%d.example.org A\n' "$i"; done >"$out/queries.txt"

# The chain is errors, prometheus, [llq or any], cache, file: a typical
# Corefile. "any" is CoreDNS's own plugin that passes every non-ANY query on,
# the control for what a plugin in llq's slot costs at all: CoreDNS serves
# every UDP query on a fresh goroutine, so one more frame can cost a stack
# copy per query, which no plugin can avoid (see BENCHMARKS.md).
corefile() { # $1: "llq", "any" or ""
	printf 'example.org:1053 {\n    bind 127.0.0.1\n    errors\n    prometheus 127.0.0.1:9153\n'
	case "$1" in
	llq) printf '    llq {\n        listen 127.0.0.1:5352\n        max-llqs 0\n        max-llqs-per-client 0\n        setup-rate 0\n        lease 1h 2h\n    }\n' ;;
	any) printf '    any\n' ;;
	esac
	printf '    cache 30\n    file %s\n}\n' "$out/tp.example.org"
}
corefile llq >"$out/with.Corefile"
corefile any >"$out/any.Corefile"
corefile "" >"$out/without.Corefile"

pid=
start() {
	GOMAXPROCS=1 taskset -c 0 "$out/coredns" -conf "$out/$1.Corefile" >"$out/$1.log" 2>&1 &
	pid=$!
	for _ in $(seq 50); do
		dnsperf -s 127.0.0.1 -p 1053 -d "$out/queries.txt" -n 1 >/dev/null 2>&1 && return
		sleep 0.1
	done
	echo "CoreDNS did not start" >&2
	exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }
trap 'kill $pid 2>/dev/null || true' EXIT

qps() { # dnsperf's queries per second against the running server
	taskset -c 1 dnsperf -s 127.0.0.1 -p 1053 -d "$out/queries.txt" -l "$secs" -c 8 -q 256 2>/dev/null |
		awk '/Queries per second/ {print $4}'
}

echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(go version | cut -d' ' -f3-)"
echo "server pinned to CPU 0 with GOMAXPROCS=1; dnsperf and llq bench pinned to CPU 1"
echo "dnsperf: -l $secs -c 8 -q 256 over $names names; rounds: $rounds"
with=()
without=()
anyp=()
setups=()
for r in $(seq "$rounds"); do
	start without
	without+=("$(qps)")
	stop
	start any
	anyp+=("$(qps)")
	stop
	start with
	with+=("$(qps)")
	setups+=("$(taskset -c 1 "$out/llq" bench @127.0.0.1:5352 -llqs 30000 -sockets 1001 -addrs 250 -names $names -window 4 -report 1h |
		awk -F'|' '/completed four-way setups per second/ {gsub(/ /, "", $3); print $3}')")
	stop
	echo "round $r: without ${without[-1]} q/s, any ${anyp[-1]} q/s, llq ${with[-1]} q/s, LLQ setups ${setups[-1]}/s"
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
mw=$(median "${with[@]}")
ma=$(median "${anyp[@]}")
mo=$(median "${without[@]}")
ms=$(median "${setups[@]}")
echo
echo "| figure | median of $rounds rounds |"
echo "| --- | --- |"
echo "| ordinary queries/s, CoreDNS without llq | $mo |"
echo "| ordinary queries/s, CoreDNS with *any* in llq's place | $ma |"
echo "| ordinary queries/s, CoreDNS with llq | $mw |"
echo "| ratio with llq / without | $(ratio "$mw" "$mo") |"
echo "| ratio with llq / with *any* | $(ratio "$mw" "$ma") |"
echo "| completed four-way LLQ setups/s, same server | $ms |"
echo "| setups/s / queries/s of the same server | $(ratio "$ms" "$mw") |"
