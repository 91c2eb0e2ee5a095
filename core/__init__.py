"""What a model is: spec, preprocessing, training, metrics, predict, on-disk format. Imports
only NumPy and engine."""
