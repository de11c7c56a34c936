//go:build tools

// Package tools pins the etcd server command that `make controlplane` builds.
package tools

import _ "go.etcd.io/etcd/server/v3"
