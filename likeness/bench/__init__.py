"""likeness.bench"""
