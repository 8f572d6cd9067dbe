"""Plugins that exist only for tests; the runner loads them with ``--import plugins_for_tests.<module>``."""
