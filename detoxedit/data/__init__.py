"""SafeEdit data: records, reading and writing files, validation, the built-in benchmark and the builder."""
