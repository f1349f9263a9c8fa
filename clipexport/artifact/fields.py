"""Typed reads from parsed JSON/TOML: one reader for the manifest, the recipes and the engine
sidecars, so every file we read reports a bad field the same way (where, which key, expected vs
got, the fix)."""

from __future__ import annotations

from typing import Any, Mapping

from clipexport.errors import ClipExportError

_MISSING = object()


class FieldReader:
    """`reader.get(data, "key", int)`; errors are `error_class(f"{where}: ... ; {fix}")`."""

    def __init__(self, where: str, error_class: type[ClipExportError], fix: str = ""):
        self.where, self.error_class, self.fix = where, error_class, fix

    def fail(self, message: str) -> ClipExportError:
        return self.error_class(f"{self.where}: {message}" + (f"; {self.fix}" if self.fix else ""))

    def get(
        self,
        data: Mapping[str, Any],
        key: str,
        kind: type | tuple[type, ...],
        prefix: str = "",
        default: Any = _MISSING,
    ) -> Any:
        if key not in data or (data[key] is None and default is not _MISSING):
            if default is _MISSING:
                raise self.fail(f"missing key '{prefix}{key}'")
            return default
        value = data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # JSON/TOML booleans are ints to Python: never accept one where a number is expected.
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            expected = "/".join(k.__name__ for k in kinds)
            raise self.fail(f"'{prefix}{key}' must be {expected}, got {type(value).__name__} {value!r}"[:300])
        return value

    def choice(
        self, data: Mapping[str, Any], key: str, options: list[str], prefix: str = "", default: Any = _MISSING
    ) -> Any:
        value = self.get(data, key, str, prefix, default)
        if value is not default and value not in options:
            raise self.fail(f"'{prefix}{key}' must be one of {', '.join(options)}, got {value!r}")
        return value
