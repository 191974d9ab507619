"""Data recipes: install real sources by package name and write byte caches.

Run them with ``python -m training.data {text,image,audio}``.
"""
