"""Helpers shared by the test modules (fixtures live in the conftest.py files).

tests/conftest.py puts tests/ on ``sys.path``, so every test module imports these as
``from support.net import ...``, whatever pytest's import mode:

- :mod:`support.net`: reaching a started server (``address``, ``tls_connect``), reading from
  sockets, IPv6 detection, polling a condition with a deadline.
- :mod:`support.tls`: stdlib client contexts, certificate files from a trustme CA, a real
  ClientHello.
- :mod:`support.servers`: small GServer subclasses that hand what they saw to the test.
- :mod:`support.process`: servers run as real subprocesses, read through their stderr.
- :mod:`support.sigserver`: the server the signal tests run as a subprocess, and its clients.
- :mod:`support.handshake`: one real handshake against a bare ``build_context`` context.
- :mod:`support.runthread`: ``server.run()`` for real, in a thread with its own hub.
- :mod:`support.leftovers`: what a server left behind after a test (the autouse fixture
  ``no_server_leftovers`` in conftest.py).
"""
