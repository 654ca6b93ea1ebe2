"""Annotate new images with a trained pipeline: the engine that runs it and the outputs people open."""
