"""The figures of lvae's pictures, one module per picture, run in the drawing process (`lvae.drawing`).

Each module's job functions take NumPy arrays and plain values, write their PNGs whole and return a `Drawn`. None
imports Lightning, and the training process never imports these modules: callbacks name them in a `Job`.
"""
