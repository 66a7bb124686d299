"""The live-Stripe module is collected only when a Stripe test-mode key is given."""

import os

collect_ignore = [] if os.environ.get("STRIPE_TEST_SECRET_KEY") else ["test_stripe_live.py"]
