"""Forecasting one series: Prophet and its fallback, the numpy point model, correction, error paths."""
