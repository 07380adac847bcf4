"""Built-in demo avatar: a drawn person, stand-in ONNX models and a short speech clip."""
