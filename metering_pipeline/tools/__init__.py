"""Commands around the code location: catalog apply, backfill and reconcile from the CLI."""
