"""Batch copy generation against an OpenAI-compatible stub with 50 ms latency per call.

Target (issue 5): customers/s at concurrency 16 at least 10x concurrency 1. The stub runs
in its own process, as a real server would: in-process it would share the client's GIL
and the benchmark would measure contention, not concurrency.
"""

from __future__ import annotations

import sys
import tempfile
import time

from loyaltylens_core.kernel.adapters import template_variables
from loyaltylens_core.sdk.testing import FAKE_OFFERS, FakeGenerator, FakePropensity, make_context, make_features
from loyaltylens_generator_openai import OpenAIGeneratorSettings, build
from loyaltylens_core.sdk.standins import free_port, start_local_process

LATENCY_S = 0.05
CUSTOMERS = 160


def main() -> int:
    batch = []
    for i in range(CUSTOMERS):
        f = make_features(f"C{i:04d}")
        batch.append(template_variables(f, FakePropensity(0.6).predict(f), FAKE_OFFERS[i % 3]))
    rates = {}
    port = free_port()
    stub = start_local_process([sys.executable, "-m", "loyaltylens_generator_openai.testing", "--port", str(port),
                                "--latency", str(LATENCY_S)], port, "OpenAI stub")
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        for concurrency in (1, 16):
            context = make_context(tempfile.mkdtemp(), fallbacks={("generator", "template"): FakeGenerator()})
            gen = build(OpenAIGeneratorSettings(base_url=base_url, concurrency=concurrency), context)
            count = CUSTOMERS if concurrency > 1 else CUSTOMERS // 4
            started = time.perf_counter()
            copies = gen.generate_many(batch[:count])
            rates[concurrency] = count / (time.perf_counter() - started)
            assert all(c.fallback is None for c in copies)
    finally:
        stub.kill()
        stub.wait()
    ratio = rates[16] / rates[1]
    print(f"OpenAI-compatible stub, {LATENCY_S * 1000:.0f} ms per call")
    print(f"  concurrency  1: {rates[1]:7.1f} customers/s")
    print(f"  concurrency 16: {rates[16]:7.1f} customers/s  ratio {ratio:.1f}x  target 10x  "
          f"{'OK' if ratio >= 10 else 'MISSED'}")
    return 0 if ratio >= 10 else 1


if __name__ == "__main__":
    sys.exit(main())
