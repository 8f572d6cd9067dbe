"""Shared training machinery: checkpoints, EMA, optimisers and schedules, gradient accumulation."""
