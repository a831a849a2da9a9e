"""The tuning-free peers: the machinery they share (:mod:`.common`: ``TuningFreeMethod``, published-file checks)
and IP-Adapter (FaceID), InstantID, PhotoMaker, PuLID and the FLUX IP-Adapter. Importing this package registers them.
"""

from likeness.methods.peers import common, flux_ip_adapter, instantid, ip_adapter, photomaker, pulid  # noqa: F401
