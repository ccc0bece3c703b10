"""Placement test helpers live in tests/helpers/sim_profiles.py (on pytest's pythonpath)."""

from sim_profiles import bert_like_profile, make_profile

__all__ = ["bert_like_profile", "make_profile"]
