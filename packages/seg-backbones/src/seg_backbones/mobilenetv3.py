"""(work in progress: filled in by the family's author)."""
