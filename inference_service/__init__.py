"""Inference tier: audio pipeline, audio encoder and avatar UNets behind the internal gRPC API."""
