"""Load-test an HTTPS application under gnetserver with locust's HttpUser.

Start the Flask example, then a bounded, headless run (20 users, 10 started per second, 10
seconds)::

    python examples/flask_app.py &
    locust -f examples/locustfile_http.py --headless -u 20 -r 10 -t 10s \\
        --host https://127.0.0.1:8443

``pip install locust`` first. Target loopback or a server you own; always bound the run with
``-t``. Each user keeps one keep-alive connection (requests' session) and mixes reads, form
posts and a streamed response. The certificate is not verified unless
``LOCUST_TLS_CAFILE`` names a CA file.
"""

from __future__ import annotations

import os
from typing import Any

from locust import HttpUser, between, task


class FlaskUser(HttpUser):
    """A user of examples/flask_app.py."""

    wait_time = between(0.01, 0.05)

    def on_start(self) -> None:
        """Verify with LOCUST_TLS_CAFILE when set, else accept the self-signed certificate;
        never take a CA bundle or proxy from the environment."""
        self.client.trust_env = False
        self.client.verify = os.environ.get("LOCUST_TLS_CAFILE") or False

    @task(5)
    def index(self) -> None:
        self.client.get("/", name="index")

    @task(2)
    def add_item(self) -> None:
        self.client.post("/items", data={"item": "pen"}, name="items POST")

    @task(1)
    def stream(self) -> None:
        with self.client.get("/count/50", name="count (streamed)", catch_response=True) as r:
            answer: Any = r
            if answer.text.count("\n") != 50:
                answer.failure("short stream")
