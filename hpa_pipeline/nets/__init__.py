"""Torch pieces shared by training and prediction: devices, model factories, D4 views, cell pooling, TTA."""
