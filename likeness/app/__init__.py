"""The interactive demo (``likeness demo``): a local web page to try methods on your own photo.

:mod:`likeness.app.workspace` (a visitor's folder and upload checks), :mod:`likeness.app.jobs`
(methods as watched, cancellable ``likeness bench`` child processes), :mod:`likeness.app.demo`
(the run and its results, no web code) and :mod:`likeness.app.ui` (the gradio page). gradio is
imported only by :mod:`likeness.app.ui`, so the rest works without it.
"""

from likeness.app.demo import Demo, PageState, RunRequest

__all__ = ["Demo", "PageState", "RunRequest"]
