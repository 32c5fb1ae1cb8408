"""Sampling: the mask engine, the forward-noising rules and the family adapters."""
