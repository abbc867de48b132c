"""Logits-based white-box methods (taxonomy branch ``white-box/logits``): one module per method.

Modules whose name starts with ``_`` hold code shared by this branch's methods (the
cross-tokenizer alignment of ULD and DSKD) and are never methods.
"""
