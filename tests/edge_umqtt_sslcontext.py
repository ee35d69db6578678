"""A stand-in for the SSLContext generation of umqtt.simple, for the unix port (copied as ``umqtt/simple.py``).

That generation (micropython-lib, what ``mip`` installs on boards) is not on PyPI, so it cannot be installed here.
This module keeps its contract — the constructor takes ``ssl=<SSLContext>`` and sets no ``ssl_params``; ``connect``
wraps the socket with ``self.ssl.wrap_socket(sock, server_hostname=self.server)`` after connecting to the address
``socket.getaddrinfo(self.server, self.port)`` gives — and reuses the 2017 generation (``umqtt/simple2017.py``) for
the MQTT packets, so the firmware's SSLContext path runs against the real broker.
"""

import sys

from umqtt import simple2017

socket = simple2017.socket  # the firmware swaps this module attribute for its NODELAY sockets
MQTTException = simple2017.MQTTException


class _Wrapper:
    def __init__(self, client):
        self.client = client

    def wrap_socket(self, sock, **_params):
        return self.client.context.wrap_socket(sock, server_hostname=self.client.server)


class MQTTClient(simple2017.MQTTClient):
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0, ssl=None):
        super().__init__(client_id, server, port, user, password, keepalive)
        del self.ssl_params
        self.ssl = ssl

    def connect(self, clean_session=True):
        context = self.ssl
        if not context:
            raise ValueError("this stand-in only speaks TLS")
        saved = sys.modules.get("ussl")
        self.context, self.ssl, self.ssl_params = context, True, {}
        sys.modules["ussl"] = _Wrapper(self)
        simple2017.socket = socket
        print("umqtt stand-in: SSLContext generation, server_hostname", self.server)
        try:
            return super().connect(clean_session)
        finally:
            self.ssl = context
            del self.ssl_params
            if saved is not None:
                sys.modules["ussl"] = saved
