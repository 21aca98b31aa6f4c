"""Architecture tables, model loading, generation and hidden-state hooks."""
