"""The front doors: /predict and the probes, /jobs, the Open Inference Protocol, the upload page."""
