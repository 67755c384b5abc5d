"""A package, so that pytest imports tests/rollout/conftest.py as `rollout.conftest`: as a
bare `conftest` it would shadow tests/conftest.py, which test modules import by that name."""
