"""Preprocessing stages: resize, segment, mask resize and cell table, cell crops."""
