"""Evaluation: the one replay of deployment, its metrics, baselines, the cases it replays, the report."""
