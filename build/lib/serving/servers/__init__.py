"""HTTP servers for the web tier: waitress for one process, gunicorn in production."""
