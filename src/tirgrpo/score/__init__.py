"""Scoring: the reward components and the curriculum that mixes them."""
