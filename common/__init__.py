"""Tiny helpers shared by packages that must not import each other (vqvae/, dalle/, train/, evaluation/)."""
