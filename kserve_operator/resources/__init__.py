"""Typed views of the custom resources: spec parsing, validation and condition bookkeeping."""
