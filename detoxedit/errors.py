"""Errors caused by the user's input. The CLI prints them without a traceback."""

from __future__ import annotations


class DetoxEditError(Exception):
    """Base class: a problem the user can fix (bad input, missing package, offline hub id)."""


class DataError(DetoxEditError):
    """A problem in a data file, naming the file, the record (index and id) and the field."""

    def __init__(self, message: str, *, file: str | None = None, index: int | None = None,
                 record_id: object = None, field: str | None = None):
        self.file, self.index, self.record_id, self.field = file, index, record_id, field
        where = []
        if file is not None:
            where.append(str(file))
        if index is not None:
            where.append(f"record {index}" + (f" (id {record_id!r})" if record_id is not None else ""))
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__((": ".join([", ".join(where), message])) if where else message)
