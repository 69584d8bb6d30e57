"""From source to a registered unit: the code cache, else the rewrite, then the blocks'
registration with ``kcovx.pcs`` (re-rewriting with salted PCs while they collide with other
units').  Every way in (live, hook, ``kcovx run``) goes through ``instrument_source``.

Threading: registration takes kcovx.pcs' lock; the rest is pure or per-file.
"""

from __future__ import annotations

import ast
from collections.abc import Callable

from kcovx import pcs
from kcovx.instrument import cache
from kcovx.instrument.rewrite import rewrite_source, rewrite_tree
from kcovx.instrument.unit import Unit


def instrument_source(
    source: str | bytes, filename: str, module: str, *, register: bool = True, cmp: bool = False
) -> Unit:
    """Instrument one source file as module ``module`` (``cmp``: comparisons record too) and
    (by default) register all its blocks and comparison sites.  SyntaxError as ``compile``
    raises it."""
    raw = source.encode("utf-8", "surrogateescape") if isinstance(source, str) else source
    key = cache.cache_key(raw, filename, module, cmp)
    unit = cache.load(key, module, filename)
    from_cache = unit is not None
    if unit is None:
        unit = rewrite_source(source, filename, module, set(), cmp)
    avoid: set[int] = set()
    while register and (bad := pcs.register(unit.entries(), unit.entries(sites=True))):
        avoid |= bad
        # Salted (its PCs depend on this process): cache.store will not keep it.
        unit = rewrite_source(source, filename, module, avoid, cmp)
    if not from_cache:
        cache.store(key, unit)
    return unit


def instrument_tree(
    tree: Callable[[], ast.Module],
    source: str | bytes,
    filename: str,
    module: str,
    *,
    cmp: bool = False,
) -> Unit:
    """Instrument the tree ``tree()`` gives (a fresh parse of ``source``, possibly rewritten
    by another tool first, such as pytest's assertion rewriting) and register its blocks and
    sites.  Not cached (the other tool's part is not in the key).  ``tree`` is called again
    if the PCs collide with other units' and the tree must be instrumented anew."""
    unit = rewrite_tree(tree(), source, filename, module, set(), cmp=cmp)
    avoid: set[int] = set()
    while bad := pcs.register(unit.entries(), unit.entries(sites=True)):
        avoid |= bad
        unit = rewrite_tree(tree(), source, filename, module, avoid, cmp=cmp)
    return unit


def register_subtree(unit: Unit, root: int) -> Unit:
    """Register the blocks of scope ``root`` of ``unit`` and of the scopes nested in it."""
    keep = unit.subtree(root)
    bad = pcs.register(unit.entries(keep), unit.entries(keep, sites=True))
    if bad:
        raise RuntimeError(f"kcovx: PC collision while instrumenting {unit.filename}")
    return unit
