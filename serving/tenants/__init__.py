"""Who may use the service, and how much: tenants with API keys and limits, kept in Redis.

- ``registry``: tenants, their limits and their keys (stored hashed), and the key lookup;
- ``limits``: each tenant's rate (a token bucket) and open jobs, shared by every web server;
- ``python -m serving.tenants add|list|revoke``: the command that manages them.

The web tier checks them (serving/web/auth.py); the queue shares its batches fairly between
tenants (serving/queue/scripts.py, TAKE).
"""
