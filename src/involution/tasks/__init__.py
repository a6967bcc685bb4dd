"""Workflows built on the models: classification (train, eval, predict), export, studies, dense tasks."""
