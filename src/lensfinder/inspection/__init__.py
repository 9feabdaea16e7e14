"""Grading candidates by eye: the web app (``app``) and the grades database (``grades``)."""
