"""SafeEdit records: reading, writing, validating and building benchmark files."""
