"""A real Kubernetes control plane for tests and the demo: built from its Go modules (build.py),
started on loopback as envtest starts it (launch.py), with simulated nodes whose pods run as
local processes (kubelet.py), and the manifests installed as a user installs them (cluster.py)."""
