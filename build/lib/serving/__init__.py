"""The service's code, one package per tier:

- ``web/``      the front doors (Flask app factory, routes, upload path, responses, OpenAPI)
- ``worker/``   the model worker (loop, batching policy, batch stats, its factory)
- ``queue/``    the wire between them (key names, Lua scripts, records, Redis clients)
- ``models/``   loading and running models (Keras, OpenVINO, labels, preprocessing)
- ``servers/``  HTTP servers for the web tier

Web and worker never import each other; they meet only in the queue's records.
"""
