"""Evaluations of trained models that do not need training machinery (critical band masking)."""
