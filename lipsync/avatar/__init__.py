"""The avatar package format shared by both tiers: avatar.yaml, backgrounds, face boxes."""

from lipsync.avatar.spec import AvatarSpec, load_spec, resolve_avatar_dir

__all__ = ["AvatarSpec", "load_spec", "resolve_avatar_dir"]
