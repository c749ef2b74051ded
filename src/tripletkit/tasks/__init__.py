"""Task modules: each wires data, a model and its evaluation to the core."""
