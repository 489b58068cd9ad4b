"""What every family's configuration shares: a frozen dataclass with ``replace``, ``to_dict`` and
``from_dict`` that refuse unknown fields by name (a typo in ``-o model.arch.x=...`` or ``--arch FILE`` must not
be dropped silently). Framework-free, like the configs themselves."""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Iterable, Mapping


class ConfigBase:
    """Mix into a frozen dataclass; ``family_title`` names the family in error messages."""

    family_title: ClassVar[str] = "?"

    @classmethod
    def _refuse_unknown(cls, keys: Iterable[str]) -> None:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(keys) - names)
        if unknown:
            raise ValueError(f"unknown {cls.family_title} config field(s) {unknown}; known: {sorted(names)}")

    def replace(self, **changes: Any):
        """A copy with ``changes`` (validated like a new config)."""
        self._refuse_unknown(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        """The fields as plain JSON/YAML values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        cls._refuse_unknown(d)
        return cls(**dict(d))
