# Sourced by bench/run.sh and bench/soak.sh: builds CoreDNS with llq and the
# llq tool into $out, writes a placeholder zone (the file plugin wants one
# at start; the bench or soak then owns it), and starts CoreDNS with the
# Corefile bench/$1, stopped when the calling script exits. Sets $pid.
mkdir -p "$out"
go build -o "$out/coredns" ./cmd/coredns
go build -o "$out/llq" ./cmd/llq
printf '$ORIGIN example.org.\n@ 3600 IN SOA ns1 hostmaster 1 7200 3600 1209600 3600\n@ 3600 IN NS ns1\nns1 3600 IN A 127.0.0.1\n' >"$out/db.example.org"
sed "s#/tmp/llq-bench#$out#g" "bench/$1" >"$out/$1"
"$out/coredns" -conf "$out/$1" >"$out/$1.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do
	grep -q "LLQ listener" "$out/$1.log" && break
	sleep 0.1
done
