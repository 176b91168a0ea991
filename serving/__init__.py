"""The HTTP prediction service and the `prealert` command line."""
