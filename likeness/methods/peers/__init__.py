"""The tuning-free peers: the machinery they share (:mod:`.common`: ``TuningFreeMethod``, published-file checks)
and IP-Adapter (FaceID), InstantID, PhotoMaker, PuLID and InfiniteYou (FLUX.1). Importing this package registers them.
"""

from likeness.methods.peers import common, infiniteyou, instantid, ip_adapter, photomaker, pulid  # noqa: F401
