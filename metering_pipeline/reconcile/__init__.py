"""Reconciliation of our usage with Stripe's, per subscription item and billing period."""
