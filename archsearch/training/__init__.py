"""Proxy training: the one training loop, scoring at label resolution, seeds, checkpoints and channel pruning."""
