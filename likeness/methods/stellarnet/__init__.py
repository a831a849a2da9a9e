"""StellarNet (:mod:`.method`). Importing this package registers the method."""

from likeness.methods.stellarnet import method  # noqa: F401
