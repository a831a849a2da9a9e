"""likeness.metrics"""
