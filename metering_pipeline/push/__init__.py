"""The push's warehouse side: the meter-event ledger and the one path that sends through it."""
