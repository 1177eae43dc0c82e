"""Celery task module: rounds."""

from __future__ import annotations
