"""Celery task module: execute."""

from __future__ import annotations
