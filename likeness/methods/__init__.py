"""likeness.methods"""
