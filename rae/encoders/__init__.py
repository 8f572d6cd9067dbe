"""Frozen representation encoders."""
