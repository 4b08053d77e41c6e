"""Label Studio: local server launcher, client, project set-up, push (pre-annotations),
pull (human labels), export, and percent<->pixel conversion (via `pipeline.boxes`)."""

from pipeline.studio.client import StudioError, StudioSettings, connect, load_settings

__all__ = ["StudioError", "StudioSettings", "connect", "load_settings"]
