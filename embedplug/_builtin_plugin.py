"""embedplug's own losses and samplers, registered as an ordinary plugin.

Exposed through embedplug's ``embedplug`` entry point, so built-ins travel the same path as third-party
plugins: same validation, same attribution, listed by ``embedplug plugins``. The registry loads this
plugin first, so built-in names can never be taken by another plugin.
"""

from embedplug.hookspecs import hookimpl

# Every entry point embedplug itself ships (pyproject.toml's [project.entry-points.embedplug]), name ->
# module, in load order. The registry loads them first, and loads them even without installed metadata
# (a source checkout); the first, this module, is the core plugin, which cannot be disabled.
SHIPPED_ENTRY_POINTS = {
    "embedplug": "embedplug._builtin_plugin",
    "sentence-transformers": "embedplug._st_plugin",
}


@hookimpl
def embedplug_register_losses(register):
    """Register every class in :data:`embedplug.losses.BUILTIN_LOSSES` under its class name."""
    # Imported inside the hook: importing the losses pulls in torch and the extension, which the
    # lazy registry must not do at ``import embedplug``.
    from embedplug.losses import BUILTIN_LOSSES

    for loss_class in BUILTIN_LOSSES:
        register(loss_class)


@hookimpl
def embedplug_register_samplers(register):
    """Register every class in :data:`embedplug.samplers.BUILTIN_SAMPLERS` under its class name."""
    from embedplug.samplers import BUILTIN_SAMPLERS

    for sampler_class in BUILTIN_SAMPLERS:
        register(sampler_class)
