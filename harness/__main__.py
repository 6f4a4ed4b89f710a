from harness.core.process import drop_current_directory

drop_current_directory()  # before anything imports a package a ./NAME.py could shadow

from harness.cli import main  # noqa: E402

raise SystemExit(main())
