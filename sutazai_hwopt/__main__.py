"""``python -m sutazai_hwopt`` is the ``sutazai-hwopt`` command."""

from .cli import main

raise SystemExit(main())
