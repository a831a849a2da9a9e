"""Reference-image editors: the shared ``EditorMethod`` (:mod:`.common`) and FLUX.1 Kontext, FLUX.2 reference
and Qwen-Image-Edit. Importing this package registers them.
"""

from likeness.methods.editors import common, flux2_reference, flux_kontext, qwen_image_edit  # noqa: F401
