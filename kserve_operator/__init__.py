"""A kopf operator for KServe model pre-warming, Istio canaries and serverless Memcached caches."""

__version__ = "0.1.0"
