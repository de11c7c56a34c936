"""The preloader: S3 -> host memory -> device, through a verified node-local cache.

Run as ``python -m preloader s3://bucket/prefix/``; see docs/preloader.md.
"""
