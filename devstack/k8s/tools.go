//go:build tools

// Package tools pins the programs of the development Kubernetes (devstack/kube.py): Kubernetes
// v1.34 from the Go module proxy, its staging modules replaced by their published v0.34
// versions (go.mod), and etcd, which Kubernetes' own go.mod pins. scripts/bootstrap.sh kube
// builds them (go build k8s.io/kubernetes/cmd/... go.etcd.io/etcd/server/v3 ./pause).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubernetes/cmd/kubelet/app"
	_ "k8s.io/kubectl/pkg/cmd"
	_ "go.etcd.io/etcd/server/v3/etcdmain"
)
