"""The plugin registry: discovers plugins, collects their losses and samplers, answers lookups.

Plugins are found through the ``embedplug`` entry-point group (embedplug's own built-ins included) and
loaded lazily, on the first lookup, never at ``import embedplug``. Each entry point is imported and each
of its hooks is called inside its own guard: a broken plugin is reported (a :class:`PluginWarning` and
an error in :func:`list_plugins`) and every other plugin keeps working.

Environment switches, read when plugins are loaded:

``EMBEDPLUG_STRICT_PLUGINS=1``
    Any plugin problem raises :class:`PluginError` instead of warning (for CI).
``EMBEDPLUG_DISABLE_PLUGINS=name1,name2``
    Skip these entry points (by entry-point name or distribution name) without importing them.
    The built-in ``embedplug`` plugin cannot be disabled.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import pluggy

from embedplug import hookspecs

__all__ = [
    "PluginError",
    "PluginRegistry",
    "PluginWarning",
    "UnknownNameError",
    "add_plugin",
    "get_loss",
    "get_registry",
    "get_sampler",
    "list_plugins",
    "remove_plugin",
    "reset_registry",
]

ENTRY_POINT_GROUP = "embedplug"
BUILTIN_DISTRIBUTION = "embedplug"
# The core plugin: embedplug's own losses and samplers, loaded first and never disabled. The other
# entry points embedplug ships are listed with it in embedplug._builtin_plugin.SHIPPED_ENTRY_POINTS.
BUILTIN_MODULE = "embedplug._builtin_plugin"
STRICT_ENV = "EMBEDPLUG_STRICT_PLUGINS"
DISABLE_ENV = "EMBEDPLUG_DISABLE_PLUGINS"

# Names must survive being typed on a command line and written into a config file.
_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,99}")


class PluginError(RuntimeError):
    """A plugin problem, raised instead of warned about when ``EMBEDPLUG_STRICT_PLUGINS=1``."""

    def __init__(self, message: str, plugin: str, distribution: str | None) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.distribution = distribution

    def __reduce__(self):
        # Exceptions are pickled from their args; keep the extra fields across processes.
        return type(self), (str(self), self.plugin, self.distribution)


class PluginWarning(UserWarning):
    """A plugin failed to load or registered something invalid; the other plugins keep working."""


class UnknownNameError(KeyError):
    """No loss or sampler is registered under the requested name.

    A :class:`KeyError`, so ``except KeyError`` keeps working; ``str()`` is a readable message
    (KeyError's own ``str()`` would show the ``repr`` of the whole message, quotes and escapes included).
    """

    def __init__(self, kind: str, name: str, message: str, close_matches: list[str]) -> None:
        super().__init__(name)
        self.kind = kind
        self.name = name
        self.message = message
        self.close_matches = close_matches

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return type(self), (self.kind, self.name, self.message, self.close_matches)


@dataclasses.dataclass(frozen=True)
class _Kind:
    """One namespace of registrable things: what it is called, its hook, its validity check and, where
    reported, how each class is implemented. A new kind of plugin class is one entry in :data:`_KINDS`
    (and its hookspec)."""

    singular: str
    plural: str  # also the record's key for the names registered under this kind
    hook_name: str
    check: Callable[[type], str | None]  # returns why ``obj`` is unacceptable, or None
    implementation: Callable[[type], str] | None = None  # fills the record's ``implementations``


def _check_loss(obj: type) -> str | None:
    import torch  # imported here: only loading plugins needs torch, not ``import embedplug.registry``

    if not issubclass(obj, torch.nn.Module):
        return f"a loss must be a torch.nn.Module subclass, got {obj!r}"
    return None


def _class_defines(cls: type, attribute: str) -> bool:
    # Look in the class's own MRO only: a metaclass (e.g. EnumMeta) providing __iter__/__len__ for the
    # class object itself does not make instances iterable.
    return any(attribute in vars(klass) for klass in cls.__mro__ if klass is not object)


def _check_sampler(obj: type) -> str | None:
    missing = [attribute for attribute in ("__iter__", "__len__") if not _class_defines(obj, attribute)]
    if missing:
        return f"a batch sampler class must define __iter__ and __len__; {obj!r} lacks {', '.join(missing)}"
    return None


def _loss_implementation(obj: type) -> str:
    from embedplug.implementations import implementation_of

    return implementation_of(obj)


LOSS = _Kind("loss", "losses", "embedplug_register_losses", _check_loss, _loss_implementation)
SAMPLER = _Kind("sampler", "samplers", "embedplug_register_samplers", _check_sampler)
_KINDS = (LOSS, SAMPLER)


@dataclasses.dataclass
class _PluginRecord:
    """What :func:`list_plugins` reports about one plugin."""

    name: str
    distribution: str | None
    version: str | None
    entry_point: str | None = None
    hooks: list[str] = dataclasses.field(default_factory=list)
    # kind.plural -> names and aliases registered, in order
    registered: dict[str, list[str]] = dataclasses.field(default_factory=lambda: {kind.plural: [] for kind in _KINDS})
    errors: list[str] = dataclasses.field(default_factory=list)
    disabled: bool = False
    # name -> which implementation runs it, for the kinds that report one (embedplug.implementations)
    implementations: dict[str, str] = dataclasses.field(default_factory=dict)
    # alias -> the name the same class was registered under first (names of every kind)
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)

    def names(self, kind: _Kind) -> list[str]:
        return self.registered[kind.plural]

    def describe(self) -> str:
        """Who this plugin is, for messages: distribution first, since that is what users uninstall."""
        if self.distribution is None:
            if self.entry_point is not None:
                return f"plugin {self.name!r} ({self.entry_point}, distribution unknown)"
            return f"in-process plugin {self.name!r}"
        version = f" {self.version}" if self.version else ""
        return f"distribution {self.distribution!r}{version} (plugin {self.name!r})"

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able record; each kind's names under its own key (``losses``, ``samplers``)."""
        record: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "registered":
                record.update({plural: list(names) for plural, names in value.items()})
            else:
                # Copies: callers must not be able to edit the registry's state.
                record[field.name] = _copy(value)
        return record


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    return list(value) if isinstance(value, list) else value


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One taken name: the class and the plugin that registered it."""

    obj: type
    owner: _PluginRecord


# --------------------------------------------------------------------------------------------------
# Environment and entry points


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _strict_mode() -> bool:
    return _truthy(os.environ.get(STRICT_ENV))


def _normalize(name: str | None) -> str:
    """PEP 503 normalization, so ``Foo_Bar`` on the command line matches distribution ``foo-bar``."""
    return re.sub(r"[-_.]+", "-", name or "").lower()


def _disabled_names() -> set[str]:
    return {_normalize(item.strip()) for item in os.environ.get(DISABLE_ENV, "").split(",") if item.strip()}


def _iter_entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    """All entry points in the ``embedplug`` group (the seam tests replace to fake installed plugins)."""
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _distribution_info(entry_point: importlib.metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _is_builtin(distribution: str | None) -> bool:
    return _normalize(distribution) == BUILTIN_DISTRIBUTION


def _shipped_entry_points() -> dict[str, str]:
    """name -> module of every entry point embedplug ships, in load order (the core plugin first)."""
    from embedplug._builtin_plugin import SHIPPED_ENTRY_POINTS

    return SHIPPED_ENTRY_POINTS


def _fallback_builtin_entry_point(name: str) -> importlib.metadata.EntryPoint:
    # Without installed metadata (a source checkout on PYTHONPATH, or metadata installed before an entry
    # point was added) a built-in entry point is invisible; loading it directly keeps the built-in losses
    # available instead of silently vanishing.
    return importlib.metadata.EntryPoint(name=name, value=_shipped_entry_points()[name], group=ENTRY_POINT_GROUP)


def _builtin_rank(entry_point: Any, distribution: str | None) -> int:
    """Position of one of embedplug's own entry points in the shipped list; len() for others."""
    names = list(_shipped_entry_points())
    if _is_builtin(distribution) and entry_point.name in names:
        return names.index(entry_point.name)
    return len(names)


def _load_order(entry_points: Iterable[importlib.metadata.EntryPoint]) -> list[tuple[Any, str | None, str | None]]:
    """``(entry_point, distribution, version)`` with the built-ins first, then a deterministic order.

    embedplug's own entry points go first, in their shipped order, so their names can never be taken
    by a third-party plugin; the rest is sorted by distribution then entry-point name, so which of two
    conflicting plugins wins does not depend on ``sys.path`` order.
    """
    resolved = [(ep, *_distribution_info(ep)) for ep in entry_points]
    present = {ep.name for ep, distribution, _ in resolved if _is_builtin(distribution)}
    for name in _shipped_entry_points():
        if name not in present:
            from embedplug import __version__

            resolved.append((_fallback_builtin_entry_point(name), BUILTIN_DISTRIBUTION, __version__))
    return sorted(resolved, key=lambda item: (_builtin_rank(item[0], item[1]), _normalize(item[1]), item[0].name))


def _missing_requirements(plugin: object) -> list[str]:
    """The import names of the plugin's ``EMBEDPLUG_REQUIRES`` declaration that cannot be imported.

    Raises TypeError when the declaration is neither an import name nor a list or tuple of them."""
    import importlib.util

    required = getattr(plugin, hookspecs.REQUIRES, ())
    required = [required] if isinstance(required, str) else required
    if not isinstance(required, (list, tuple)) or not all(isinstance(name, str) and name for name in required):
        raise TypeError(f"{hookspecs.REQUIRES} must be an import name or a tuple of them, got {required!r}")
    return [name for name in required if importlib.util.find_spec(name) is None]


def _attribute(record: _PluginRecord, plugin: object) -> None:
    """Report the plugin as the distribution its ``EMBEDPLUG_ATTRIBUTION`` names, with that version."""
    attribution = getattr(plugin, hookspecs.ATTRIBUTION, None)
    if not isinstance(attribution, str) or not attribution:
        return
    try:
        version = importlib.metadata.version(attribution)
    except importlib.metadata.PackageNotFoundError:
        version = None
    record.distribution, record.version = attribution, version


def _describe_exception(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _close_matches(name: str, candidates: Iterable[str]) -> list[str]:
    # Compare case-insensitively: "supconloss" should suggest "SupConLoss".
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    return [by_lower[match] for match in difflib.get_close_matches(name.lower(), by_lower, n=3, cutoff=0.6)]


# --------------------------------------------------------------------------------------------------
# Registration


class _RegistrationSession:
    """The ``register`` callback handed to one hook call of one plugin.

    Registrations are staged and committed only when the hook returns, so a hook that raises halfway
    leaves nothing behind. After the hook returns the callback refuses further calls (a plugin that kept
    it around must not register behind the registry's back).
    """

    def __init__(self, registry: PluginRegistry, kind: _Kind, record: _PluginRecord) -> None:
        self._registry = registry
        self._kind = kind
        self._record = record
        self.staged: dict[str, type] = {}
        self.aliases: dict[str, str] = {}  # staged alias -> the name staged first for the same class
        self._open = True

    def register(self, obj: Any, name: str | None = None, aliases: Iterable[str] = ()) -> None:
        """Register ``obj`` under ``name`` (default ``obj.__name__``) and ``aliases``; see the hookspecs."""
        if not self._open:
            raise RuntimeError(f"register() for {self._kind.plural} was called after {self._kind.hook_name} returned")
        where = f"{self._kind.hook_name}: register({obj!r})"
        problem = self._check_object(obj)
        if problem is None and isinstance(aliases, str):
            problem = f"aliases must be a list or tuple of names, not the string {aliases!r}"
        if problem is not None:
            self._registry._report(self._record, f"{where} refused: {problem}")
            return
        try:
            names = [obj.__name__ if name is None else name, *aliases]
        except TypeError as exc:
            self._registry._report(self._record, f"{where} refused: aliases are not iterable ({exc})")
            return
        # Each name is claimed on its own: one taken alias does not take the class's other names down.
        # The first name claimed is the class's name in this plugin; the others are its aliases.
        primary = None
        for each_name in dict.fromkeys(names):
            if self._claim(obj, each_name, where):
                if primary is None:
                    primary = each_name
                else:
                    self.aliases[each_name] = primary

    def close(self) -> None:
        self._open = False

    def _check_object(self, obj: Any) -> str | None:
        if not isinstance(obj, type):
            return f"expected a class, got {type(obj).__name__}"
        return self._kind.check(obj)

    def _claim(self, obj: type, name: Any, where: str) -> bool:
        """Stage ``name`` for ``obj``; True when it is newly staged (False: refused, or already this class's)."""
        if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
            self._registry._report(
                self._record,
                f"{where} refused: invalid {self._kind.singular} name {name!r} "
                "(letters, digits, '_', '-', '.', starting with a letter, at most 100 characters)",
            )
            return False
        staged = self.staged.get(name)
        if staged is obj:
            return False  # the same class under the same name again from the same plugin: harmless
        existing = self._registry._namespaces[self._kind].get(name)
        if existing is not None and existing.owner is self._record and existing.obj is obj:
            return False
        if staged is not None or existing is not None:
            owner = self._record if staged is not None else existing.owner
            self._registry._report(
                self._record,
                f"{self._kind.singular} name {name!r} is already registered by {owner.describe()}; "
                f"the registration from {self._record.describe()} was refused",
            )
            return False
        self.staged[name] = obj
        return True


class PluginRegistry:
    """Plugins and the losses and samplers they registered; one per process (:func:`get_registry`).

    Thread-safe: loading and every lookup hold one re-entrant lock.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._clear()

    # ----- public API

    @property
    def is_loaded(self) -> bool:
        """Whether entry points have been discovered (lookups trigger it; ``import embedplug`` does not)."""
        return self._loaded

    def reset(self) -> None:
        """Forget every plugin (in-process ones too); the next lookup discovers entry points afresh."""
        with self._lock:
            self._clear()

    def get_loss(self, name: str) -> type:
        """The loss class registered under ``name`` (or an alias); :class:`UnknownNameError` if none."""
        return self._lookup(LOSS, name)

    def get_sampler(self, name: str) -> type:
        """The batch-sampler class registered under ``name`` (or an alias); :class:`UnknownNameError` if none."""
        return self._lookup(SAMPLER, name)

    def list_plugins(self) -> list[dict[str, Any]]:
        """One JSON-able record per plugin, in load order (built-in first).

        Keys: ``name`` (entry-point or in-process name), ``distribution``, ``version``, ``entry_point``,
        ``hooks`` (hook names implemented), ``losses`` and ``samplers`` (names and aliases it registered),
        ``errors`` (problems, empty when healthy), ``disabled`` (skipped by ``EMBEDPLUG_DISABLE_PLUGINS``),
        ``implementations`` (``{loss name: implementation}``, see :mod:`embedplug.implementations`) and
        ``aliases`` (``{alias: the name it stands for}``, of every kind).
        """
        with self._lock:
            self._ensure_loaded()
            return [record.to_dict() for record in self._records]

    def add_plugin(
        self,
        plugin: object,
        name: str | None = None,
        distribution: str | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Register an in-process plugin (a module or object with hookimpls), e.g. a throwaway one in a test.

        Entry points load first, so built-in names stay built-in. Problems are reported exactly as for
        installed plugins. Returns the plugin's record; undo with :meth:`remove_plugin`.
        """
        with self._lock:
            self._ensure_loaded()
            name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
            if name in self._plugins:
                raise ValueError(f"a plugin named {name!r} is already registered")
            record = _PluginRecord(name=name, distribution=distribution, version=version)
            if distribution is None:
                _attribute(record, plugin)
            self._add_record(record)
            try:
                try:
                    missing = _missing_requirements(plugin)
                except TypeError as exc:
                    self._report(record, f"is not a valid plugin: {exc}", exc)
                    missing = None
                if missing:
                    self._report(record, f"requires {', '.join(missing)}, which cannot be imported; nothing registered")
                elif missing is not None:
                    self._register_plugin(plugin, record)
            except PluginError:
                self._forget(record)  # strict mode: leave no half-registered plugin behind
                raise
            return record.to_dict()

    def remove_plugin(self, name: str) -> None:
        """Unregister the plugin called ``name`` and every name it registered; :class:`KeyError` if unknown."""
        with self._lock:
            if name not in self._plugins:
                raise KeyError(name)
            self._forget(self._plugins[name])

    # ----- loading

    def _clear(self) -> None:
        self._plugin_manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._plugin_manager.add_hookspecs(hookspecs)
        self._records: list[_PluginRecord] = []  # every plugin seen, in load order, failed ones too
        self._plugins: dict[str, _PluginRecord] = {}  # plugin name -> the record that owns it
        self._namespaces: dict[_Kind, dict[str, _Entry]] = {kind: {} for kind in _KINDS}
        self._loaded = False

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        # Marked before loading: a plugin that looks something up while being loaded sees the plugins
        # loaded so far instead of recursing into another load.
        self._loaded = True
        try:
            self._load_entry_points()
        except BaseException:
            self._clear()  # strict mode (or Ctrl-C): no half-loaded state; the next lookup tries again
            raise

    def _load_entry_points(self) -> None:
        disabled = _disabled_names()
        for entry_point, distribution, version in _load_order(_iter_entry_points()):
            record = _PluginRecord(
                name=entry_point.name, distribution=distribution, version=version, entry_point=entry_point.value
            )
            if self._is_disabled(record, disabled):
                record.disabled = True
                self._records.append(record)
                continue
            if record.name in self._plugins:
                self._records.append(record)
                owner = self._plugins[record.name]
                self._report(record, f"plugin name {record.name!r} is already used by {owner.describe()}; not loaded")
                continue
            try:
                plugin = entry_point.load()
            except Exception as exc:
                self._add_record(record)
                self._report(record, f"import of {entry_point.value!r} failed: {_describe_exception(exc)}", exc)
                continue
            try:
                missing = _missing_requirements(plugin)
            except TypeError as exc:
                self._add_record(record)
                self._report(record, f"is not a valid plugin: {exc}", exc)
                continue
            if missing:
                continue  # an optional plugin whose library is not installed: nothing to register, not listed
            _attribute(record, plugin)
            self._add_record(record)
            self._register_plugin(plugin, record)

    def _is_disabled(self, record: _PluginRecord, disabled: set[str]) -> bool:
        # embedplug's own entry points answer to their entry-point name only: their distribution's name
        # ("embedplug") is the core plugin's.
        names = {record.name} if _is_builtin(record.distribution) else {record.name, record.distribution}
        if not disabled & {_normalize(name) for name in names}:
            return False
        if _is_builtin(record.distribution) and record.entry_point == BUILTIN_MODULE:
            warnings.warn(
                f"{DISABLE_ENV} names the built-in embedplug plugin, which cannot be disabled; ignoring it",
                PluginWarning,
                stacklevel=2,
            )
            return False
        return True

    def _add_record(self, record: _PluginRecord) -> None:
        self._records.append(record)
        self._plugins[record.name] = record

    def _register_plugin(self, plugin: object, record: _PluginRecord) -> None:
        try:
            # pluggy validates hookimpl signatures against the specs here.
            self._plugin_manager.register(plugin, name=record.name)
        except Exception as exc:
            self._report(record, f"is not a valid plugin: {_describe_exception(exc)}", exc)
            return
        hook_callers = self._plugin_manager.get_hookcallers(plugin) or []
        record.hooks = sorted(caller.name for caller in hook_callers)
        self._check_hook_names(plugin, record, hook_callers)
        for kind in _KINDS:
            self._run_hook(kind, plugin, record)

    def _check_hook_names(self, plugin: object, record: _PluginRecord, hook_callers: list) -> None:
        # pluggy silently accepts a hookimpl for a hook that has no spec, and silently ignores a function
        # that forgot @hookimpl; both mean a plugin that registers nothing, so say so.
        for caller in hook_callers:
            if caller.spec is None:
                self._report(record, f"implements unknown hook {caller.name!r} (known: {_known_hooks()})")
        implemented = {caller.name for caller in hook_callers}
        for attribute in dir(plugin):
            if attribute in _known_hooks() and attribute not in implemented:
                self._report(record, f"{attribute!r} is not decorated with @embedplug.hookimpl and was ignored")

    def _run_hook(self, kind: _Kind, plugin: object, record: _PluginRecord) -> None:
        hook = getattr(self._plugin_manager.hook, kind.hook_name)
        for impl in hook.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            if impl.hookwrapper or impl.wrapper:
                self._report(record, f"{kind.hook_name} must be a plain hookimpl, not a wrapper")
                continue
            session = _RegistrationSession(self, kind, record)
            # Called directly rather than through pm.hook, so every registration is attributed to this
            # plugin and one plugin's exception cannot stop the others' hooks.
            arguments = {"register": session.register}
            try:
                impl.function(*(arguments[name] for name in impl.argnames))
            except PluginError:
                raise
            except Exception as exc:
                self._report(
                    record,
                    f"{kind.hook_name} raised {_describe_exception(exc)}; its {kind.plural} were not registered",
                    exc,
                )
                continue
            finally:
                session.close()
            self._commit(kind, record, session)

    def _commit(self, kind: _Kind, record: _PluginRecord, session: _RegistrationSession) -> None:
        namespace = self._namespaces[kind]
        for name, obj in session.staged.items():
            namespace[name] = _Entry(obj, record)
            record.names(kind).append(name)
            if kind.implementation is not None:
                record.implementations[name] = kind.implementation(obj)
        record.aliases.update(session.aliases)

    def _forget(self, record: _PluginRecord) -> None:
        if self._plugins.get(record.name) is record:
            del self._plugins[record.name]
            # The record owning the name is the only one pluggy can know under it.
            self._plugin_manager.unregister(name=record.name)
        for namespace in self._namespaces.values():
            for name in [name for name, taken in namespace.items() if taken.owner is record]:
                del namespace[name]
        self._records = [each for each in self._records if each is not record]

    def _report(self, record: _PluginRecord, problem: str, cause: BaseException | None = None) -> None:
        """Record a plugin problem; warn, or raise :class:`PluginError` in strict mode."""
        record.errors.append(problem)
        message = f"embedplug plugin from {record.describe()}: {problem}"
        if _strict_mode():
            raise PluginError(message, record.name, record.distribution) from cause
        warnings.warn(message, PluginWarning, stacklevel=2)

    # ----- lookups

    def _lookup(self, kind: _Kind, name: str) -> type:
        if not isinstance(name, str):
            raise TypeError(f"{kind.singular} name must be a string, got {type(name).__name__}")
        with self._lock:
            self._ensure_loaded()
            entry = self._namespaces[kind].get(name)
            if entry is not None:
                return entry.obj
            raise self._unknown_name_error(kind, name)

    def _unknown_name_error(self, kind: _Kind, name: str) -> UnknownNameError:
        available = sorted(self._namespaces[kind])
        close = _close_matches(name, available)
        parts = [f"no {kind.singular} named {name!r}."]
        if close:
            parts.append(f"Did you mean {' or '.join(map(repr, close))}?")
        for other in _KINDS:
            if other is not kind and name in self._namespaces[other]:
                parts.append(f"{name!r} is a {other.singular}: use get_{other.singular}().")
        parts.append(f"Available {kind.plural}: {', '.join(available) if available else '(none)'}.")
        failed = [record.describe() for record in self._records if record.errors]
        if failed:
            parts.append(f"Plugins with errors: {'; '.join(failed)}; run `embedplug plugins` for details.")
        return UnknownNameError(kind.singular, name, " ".join(parts), close)


def _known_hooks() -> list[str]:
    return [kind.hook_name for kind in _KINDS]


# --------------------------------------------------------------------------------------------------
# The process-wide registry and its module-level API

_REGISTRY = PluginRegistry()


def get_registry() -> PluginRegistry:
    """The process-wide :class:`PluginRegistry` behind :func:`get_loss`, :func:`get_sampler` and friends."""
    return _REGISTRY


def get_loss(name: str) -> type:
    """The loss class registered under ``name`` or an alias; raises :class:`UnknownNameError` (a KeyError)."""
    return _REGISTRY.get_loss(name)


def get_sampler(name: str) -> type:
    """The batch-sampler class registered under ``name`` or an alias; raises :class:`UnknownNameError`."""
    return _REGISTRY.get_sampler(name)


def list_plugins() -> list[dict[str, Any]]:
    """One JSON-able record per plugin (see :meth:`PluginRegistry.list_plugins` for the keys)."""
    return _REGISTRY.list_plugins()


def add_plugin(
    plugin: object, name: str | None = None, distribution: str | None = None, version: str | None = None
) -> dict[str, Any]:
    """Register an in-process plugin object or module (see :meth:`PluginRegistry.add_plugin`)."""
    return _REGISTRY.add_plugin(plugin, name=name, distribution=distribution, version=version)


def remove_plugin(name: str) -> None:
    """Unregister an in-process or entry-point plugin by name, with everything it registered."""
    _REGISTRY.remove_plugin(name)


def reset_registry() -> None:
    """Forget all plugins; the next lookup rediscovers entry points (e.g. after installing a plugin)."""
    _REGISTRY.reset()
