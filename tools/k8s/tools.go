//go:build tools

// Package k8s pins the Kubernetes control-plane commands the integration
// tests run (kube-apiserver and etcd). It is a separate module so that the
// product's go.mod does not grow k8s.io/kubernetes; build.sh builds the
// commands from it. The build tag keeps the blank imports of main packages
// out of every ordinary build.
package k8s

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
