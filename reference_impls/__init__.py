"""Compact, tested reference implementations of knowledge-distillation methods for LLMs."""
