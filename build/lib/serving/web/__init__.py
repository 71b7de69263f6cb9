"""The web tier: the app factory, front doors, the upload path, responses, OpenAPI, metrics."""
