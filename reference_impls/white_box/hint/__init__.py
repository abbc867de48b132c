"""Hint/feature-based white-box methods (taxonomy branch ``white-box/hint``): one module per method.

The student learns from what the teacher computes inside — hidden states, attention maps,
self-attention relations — besides (or before) its outputs. The losses are in
`reference_impls.losses.features`; layer maps, projectors and feature capture in
`reference_impls.white_box.features`. The encoder methods run on the classification suite
(`reference_impls.run.encoders`).
"""
