"""textloop: find and remove text from images, and learn from human review in Label Studio."""

__version__ = "0.1.0"
