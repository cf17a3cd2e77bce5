"""Billing analytics over provider exports (FOCUS 1.0/1.2, CUR 2.0): load, detect
runaways and cache misses, reconcile the bill with the ledger, export the ledger."""
