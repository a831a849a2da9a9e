"""Writers of random published-layout weights and tiny ONNX models that only tests and benchmarks use
(no command of likeness imports this package; the tiny base models a default run loads stay in
:mod:`likeness.models`).
"""
