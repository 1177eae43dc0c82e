"""Celery task module: score."""

from __future__ import annotations
