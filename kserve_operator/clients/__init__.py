"""The only code that does I/O: the Kubernetes API and Prometheus."""
