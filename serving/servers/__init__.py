"""HTTP servers for the web tier: gevent's WSGI server for one process; in production,
gunicorn's gevent worker (gunicorn.conf.py)."""
