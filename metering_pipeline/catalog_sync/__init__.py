"""The Stripe catalog in warehouse tables: validity intervals, billing periods, table writes."""
