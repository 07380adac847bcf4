"""Compositing tier: the public API, avatar backgrounds, compositing and JPEG encoding."""
