#!/usr/bin/env bash
# DNS Push across a clean restart (issue 11): CoreDNS with llq runs in a
# loop that starts it again as soon as it exits; `llq bench push -watchers`
# follows N questions with client.Watch (one DNS Push session each), sends
# the running CoreDNS SIGTERM, and times the Retry Delays, the exit, the
# new listener and every watcher's resubscription, checking that none came
# back before its Retry Delay ran out.
#
#   bench/push-restart.sh [N] [RETRY-DELAY]     # default 5000 watchers, llq's default Retry Delay (1s)
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
n=${1:-5000}
out=${BENCH_OUT:-/tmp/llq-bench}
mkdir -p "$out"
. bench/push-cert.sh
go build -o "$out/coredns" ./cmd/coredns
go build -o "$out/llq" ./cmd/llq
{
	printf '$ORIGIN example.org.\n$TTL 3600\n@ IN SOA ns1 hostmaster 1 7200 3600 1209600 3600\n  IN NS ns1\nns1 IN A 127.0.0.1\n'
	for i in $(seq 0 999); do printf 'n%d IN A 192.0.2.%d\n' "$i" $((i % 250 + 1)); done
} >"$out/db.example.org"
sed "s#/tmp/llq-bench#$out#g" bench/push.Corefile >"$out/restart.Corefile"
if [ -n "${2:-}" ]; then
	sed -i "s#^\(        max-subscriptions-per-session 0\)#\1\n        retry-delay $2#" "$out/restart.Corefile"
fi
rm -f "$out/restart.stop" "$out/restart.pid"
(
	while [ ! -e "$out/restart.stop" ]; do
		"$out/coredns" -conf "$out/restart.Corefile" >>"$out/restart.log" 2>&1 &
		echo $! >"$out/restart.pid"
		wait $! || true
	done
) &
loop=$!
trap 'touch "$out/restart.stop"; kill "$(cat "$out/restart.pid")" 2>/dev/null; wait $loop 2>/dev/null || true' EXIT
for _ in $(seq 100); do
	grep -q "DNS Push (TLS) listener" "$out/restart.log" 2>/dev/null && break
	sleep 0.1
done
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(go version | cut -d' ' -f3-)"
echo "load before: $(uptime | sed 's/.*load average: //')"
echo "retry-delay: ${2:-default (1s)}"
echo "command: llq bench push @127.0.0.1:8853 -watchers $n -pidfile $out/restart.pid -ca $out/ca.pem"
"$out/llq" bench push @127.0.0.1:8853 -watchers "$n" -pidfile "$out/restart.pid" -ca "$out/ca.pem"
echo "load after: $(uptime | sed 's/.*load average: //')"
