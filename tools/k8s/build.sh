#!/usr/bin/env bash
# Builds the Kubernetes control plane the integration tests run against
# (kube-apiserver and etcd) from this module's pinned versions, into
#   ${LLQ_K8S_BIN:-$HOME/.cache/llq-k8s/bin}
# and prints that directory. Nothing is rebuilt while both binaries exist and
# were built from the current go.mod, go.sum and this script (a stamp file
# records their hash). Needs only Go and the Go module proxy; a cold build
# takes about 10 minutes on 2 cores (kube-apiserver is most of it) and about
# 2.6 GB of Go build cache; the two stripped binaries are about 145 MB.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${LLQ_K8S_BIN:-$HOME/.cache/llq-k8s/bin}
mkdir -p "$bin"
bin=$(cd "$bin" && pwd)

stamp=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -d' ' -f1)
if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ] &&
	[ "$(cat "$bin/.stamp" 2>/dev/null)" = "$stamp" ]; then
	echo "$bin"
	exit 0
fi

cd "$here"
export GOWORK=off GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly"
# Without these /version says v0.0.0-master, which clients reject.
k8s=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
minor=$(echo "$k8s" | cut -d. -f2)
ver=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ver="$ver -X $p.gitVersion=$k8s -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done

rm -f "$bin/.stamp"
start=$(date +%s)
# Build into temporary names and rename, so a concurrent reader never sees a
# half-written binary.
go build -trimpath -ldflags "-s -w $ver" -o "$bin/.kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
go build -trimpath -ldflags "-s -w" -o "$bin/.etcd.tmp" go.etcd.io/etcd/server/v3
mv -f "$bin/.kube-apiserver.tmp" "$bin/kube-apiserver"
mv -f "$bin/.etcd.tmp" "$bin/etcd"
echo "$stamp" >"$bin/.stamp"
echo "built kube-apiserver $k8s and etcd in $(($(date +%s) - start)) s" >&2
echo "$bin"
