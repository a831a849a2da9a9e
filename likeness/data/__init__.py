"""likeness.data"""
