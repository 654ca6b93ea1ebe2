"""Trained models shared outside the workflow: the 2018 task's image model as a BioImage Model Zoo package
(:mod:`hpa_pipeline.zoo.bioimageio`)."""
