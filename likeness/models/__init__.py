"""likeness.models"""
