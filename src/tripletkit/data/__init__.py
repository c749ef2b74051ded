"""Datasets: face images (folder per identity, ORL built in) and, later, text retrieval."""
