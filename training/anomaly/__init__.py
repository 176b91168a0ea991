"""Anomaly detection: the workload isolation forest, causal features, streaming scores, evaluation."""
