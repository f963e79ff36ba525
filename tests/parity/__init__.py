"""Outputs against reference implementations (DeepMind, timm, pycls, big_vision, PIL, Epoch
AI) and the papers' tables."""
