"""This project's local harness around the emulated cluster: the operator as a child process,
real memcached/Prometheus helpers, and the demo. `devcluster` is the generic part and never
imports this package."""
