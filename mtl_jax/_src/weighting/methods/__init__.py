"""The weighting methods, one module each; importing this package registers them all.

Adding a method: a module here whose builder is decorated
``@registry.WEIGHTINGS.register('<name>')``, and its tests.  Every module of this package is
imported below (in name order), so the new file needs no edit elsewhere.
"""

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
  importlib.import_module(f'{__name__}.{_info.name}')
