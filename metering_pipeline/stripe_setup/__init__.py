"""The Stripe catalog file (catalog as code): parsing and planning, no Stripe calls."""
