"""Pictures and pages for people: every image and HTML page lensfinder writes or serves.

Colour composites and mosaics (``composite``), ROC and score plots (``plots``), the evaluation
report (``report``), failure mosaics (``failures``), the candidate gallery's stamps and page
(``gallery``), a layout's preview grid (``preview``) and the grading page's assets
(``page.html``, ``page.js``, ``page.css``, served by ``lensfinder.inspection``).

The stages call this package to draw their outputs; it knows no stage (it sits right above the
data layer) and never imports torch, so the gallery and the grading server start without it.
"""

from pathlib import Path

PAGE_ASSETS = Path(__file__).parent  # the grading page: page.html, page.js, page.css
