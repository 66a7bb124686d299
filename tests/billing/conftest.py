"""Billing fixtures: a localstripe server per module. The live-Stripe module is collected only
when a Stripe test-mode key is given."""

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.servers import free_port

collect_ignore = [] if os.environ.get("STRIPE_TEST_SECRET_KEY") else ["test_stripe_live.py"]


@pytest.fixture(scope="module")
def localstripe_url():
    """A localstripe server on loopback for this module."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "localstripe", "--port", str(port), "--from-scratch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(url + "/v1/customers", timeout=1)
            except urllib.error.HTTPError:
                break  # it answers (401 without a key): up
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
