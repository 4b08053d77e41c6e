"""Curation: duplicates/outliers (`duplicates`), label noise (`label_noise`), reports (`report`)."""
