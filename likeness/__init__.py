"""likeness: put a specific person into any scene, and measure how well it worked."""

__version__ = "0.1.0"
