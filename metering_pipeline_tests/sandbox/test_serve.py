"""`metering sandbox --port N` serves the same API as a standalone process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import stripe

from metering_pipeline_tests.sandbox.support import wait_until_serving


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_metering_sandbox_command_serves_the_api(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "metering_pipeline.cli", "sandbox", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "METERING_HOME": str(tmp_path)},  # its state file goes there
    )
    try:
        wait_until_serving(url, process)
        client = stripe.StripeClient("sk_test_cli", base_addresses={"api": url})
        product = client.v1.products.create({"name": "served"})
        assert client.v1.products.retrieve(product.id).name == "served"
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert f"Stripe sandbox on {url}" in output
    assert (tmp_path / "sandbox-state.json").exists()
    assert "sk_test_cli" not in output  # the key is never logged
