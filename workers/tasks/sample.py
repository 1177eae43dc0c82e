"""Celery task module: sample."""

from __future__ import annotations
