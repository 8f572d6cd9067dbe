"""Where a run's parameters, metrics and images go."""
