"""The serving package: queue protocol, model worker, model adapters and web routes."""
