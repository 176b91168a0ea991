"""Feature jobs: Parquet metric exports in, validated regular per-series frames and feature tables out."""
