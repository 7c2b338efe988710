"""LoyaltyLens core: hook specs, contracts, config, plugin resolution and the pipeline.

Plugin authors need only ``hookimpl`` and the contracts:

    from loyaltylens_core import hookimpl
    from loyaltylens_core.contracts import GeneratedCopy
"""

from .hookspecs import hookimpl, hookspec

__all__ = ["hookimpl", "hookspec", "__version__"]
__version__ = "0.1.0"
