"""Instrument tables: one module per survey, each a plain table of numbers with citations."""

from lensfinder.surveys.base import Band, Survey
from lensfinder.surveys.euclid import EUCLID

SURVEYS: dict[str, Survey] = {EUCLID.name: EUCLID}


def get_survey(name: str) -> Survey:
    """Look a survey up by name (case-insensitive)."""
    try:
        return SURVEYS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown survey {name!r}; known: {', '.join(sorted(SURVEYS))}") from None


__all__ = ["EUCLID", "SURVEYS", "Band", "Survey", "get_survey"]
