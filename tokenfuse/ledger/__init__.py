"""The ledger: one row per request the gateway saw, admitted or refused."""
