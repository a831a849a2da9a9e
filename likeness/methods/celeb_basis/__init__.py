"""Celeb Basis: the method (:mod:`.method`), its celebrity-name basis (:mod:`.basis`) and the names it reads
(``data/celebrity_names.txt``). Importing this package registers the method.
"""

from likeness.methods.celeb_basis import method  # noqa: F401
