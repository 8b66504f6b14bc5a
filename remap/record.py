"""Named tuples without importing collections.

Why not ``collections.namedtuple``: importing collections (with the operator, keyword and
reprlib modules it loads) costs every command ~1.8 ms, about a tenth of ``remap map --json``
(issue 15's goal is a few ms), and building each class evaluates generated source.  A record
here is a tuple subclass like a named tuple: it compares, hashes and unpacks as a tuple, its
fields are C-level item getters, and ``_make``/``_replace``/``_fields`` behave as there.
"""

from __future__ import annotations

try:  # the C field accessor namedtuple itself uses (CPython); a property where it is missing
    from _collections import _tuplegetter
except ImportError:  # pragma: no cover - other interpreters

    def _tuplegetter(index: int, doc: str):
        return property(lambda self: self[index], doc=doc)


def record(name: str, fields: str, defaults: tuple = ()) -> type:
    """A tuple type NAME with the space-separated FIELDS, the last ``len(defaults)`` optional.

    Subclass it to add a docstring, annotations and methods (with ``__slots__ = ()``, as for a
    named tuple).  Raises TypeError, as a named tuple does, for a missing or unknown field.
    """
    names = tuple(fields.split())
    n = len(names)
    if len(defaults) > n:
        raise TypeError(f"{name}: more defaults than fields")
    first_default = n - len(defaults)

    def __new__(cls, *args, **kw):
        if len(args) == n and not kw:
            return tuple.__new__(cls, args)
        if len(args) > n:
            raise TypeError(f"{name} takes {n} fields, got {len(args)}")
        vals = list(args)
        for i in range(len(args), n):
            if names[i] in kw:
                vals.append(kw.pop(names[i]))
            elif i >= first_default:
                vals.append(defaults[i - first_default])
            else:
                raise TypeError(f"{name} is missing field {names[i]!r}")
        if kw:
            raise TypeError(f"{name} has no field {next(iter(kw))!r} (or got it twice)")
        return tuple.__new__(cls, vals)

    def _replace(self, **kw) -> tuple:
        out = self._make([kw.pop(f, v) for f, v in zip(names, self, strict=True)])
        if kw:
            raise TypeError(f"{name} has no field {next(iter(kw))!r}")
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={v!r}" for f, v in zip(names, self, strict=True))
        return f"{type(self).__name__}({inner})"

    def __getnewargs__(self) -> tuple:  # copy and pickle rebuild through __new__(*fields)
        return tuple(self)

    ns: dict = {
        "__slots__": (),
        "__new__": __new__,
        # the fast path for parsers building thousands: tuple.__new__ itself, no Python frame
        # and no argument handling (the caller passes every field, in order)
        "_make": classmethod(tuple.__new__),
        "_replace": _replace,
        "__repr__": __repr__,
        "__getnewargs__": __getnewargs__,
        "_fields": names,
        "_field_defaults": dict(zip(names[first_default:], defaults, strict=True)),
        "__match_args__": names,
    }
    for i, f in enumerate(names):
        ns[f] = _tuplegetter(i, f"field {i}: {f}")
    return type(name, (tuple,), ns)
