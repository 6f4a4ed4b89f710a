"""Name -> class registries for the pluggable axes (backends, tasks), filled by a decorator on each class,
so adding a plug-in is one new module and nothing else to edit; an unknown name suggests the nearest."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


def did_you_mean(name: object, known) -> str:
    """``; did you mean 'NEAREST'?`` when one of the ``known`` names is close to NAME (a typo), else ''."""
    near = difflib.get_close_matches(str(name), list(known), n=1)
    return f"; did you mean {near[0]!r}?" if near else ""


class Registry(Mapping[str, T], Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``@BACKENDS.register("llamacpp")`` makes the class the suite ``type`` NAME."""

        def add(cls: T) -> T:
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({self._classes[name].__name__}, "
                                 f"{cls.__name__})")
            cls.type_name = name
            self._classes[name] = cls
            return cls

        return add

    def unknown(self, name: object) -> str:
        """What to tell a user who asked for NAME: the known names, and the nearest one if any is close."""
        return f"expected one of {sorted(self._classes)}, got {name!r}{did_you_mean(name, self._classes)}"

    def __getitem__(self, name: str) -> T:
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)
