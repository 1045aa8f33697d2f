"""``python -m aldm.cli``: the ``aldm`` command."""

from . import entry

entry()
