"""Files, without Lightning: safe loading, run folders and checkpoint names, atomic writes, and the
typed result tables every ``probe.py`` command keeps."""
