"""Masks of what is in an image: people and faces (person masks) and salient objects (:mod:`.salient`)."""
