"""likeness.compose"""
