"""The tuning-free peers: the machinery they share (:mod:`.common`: ``TuningFreeMethod``, published-file checks)
and IP-Adapter (FaceID), InstantID, PhotoMaker, PuLID, and on FLUX.1 PuLID-FLUX and InfiniteYou. Importing this
package registers them.
"""

from likeness.methods.peers import common, infiniteyou, instantid, ip_adapter, photomaker, pulid, pulid_flux  # noqa: F401
