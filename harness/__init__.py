"""What the tests and the benchmark share: processes, launch lines. Not part of the service."""
