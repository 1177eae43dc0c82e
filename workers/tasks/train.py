"""Celery task module: train."""

from __future__ import annotations
