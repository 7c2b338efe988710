"""The HTTP server class for every local server the project runs (the local model
endpoint and the test stand-ins for OpenAI, Weaviate and Vertex AI).

``socketserver``'s default listen backlog is 5: a burst of more new connections than that
(16 concurrent LLM calls, a batch of searches) gets resets, which clients then retry with
back-off, and throughput collapses for reasons that have nothing to do with the code
under test.
"""

from __future__ import annotations

from http.server import ThreadingHTTPServer


class LocalHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
