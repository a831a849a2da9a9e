"""The tuning-free peers: the machinery they share (:mod:`.common`: ``TuningFreeMethod``, published-file checks)
and IP-Adapter (FaceID), InstantID, PhotoMaker, PuLID, and on FLUX.1 PuLID-FLUX, InfiniteYou and XLabs' FLUX
IP-Adapter. Importing this package registers them.
"""

from likeness.methods.peers import (  # noqa: F401
    common, flux_ip_adapter, infiniteyou, instantid, ip_adapter, photomaker, pulid, pulid_flux,
)
