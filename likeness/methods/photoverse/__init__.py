"""PhotoVerse: the method (:mod:`.method`), its adapter modules (:mod:`.modules`) and its training data
(:mod:`.data`). Importing this package registers the method.
"""

from likeness.methods.photoverse import method  # noqa: F401
