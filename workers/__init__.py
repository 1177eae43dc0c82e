"""Celery app, tasks (sample, execute, score, train) and sampling backends."""
