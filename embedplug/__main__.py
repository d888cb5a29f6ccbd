from embedplug.cli import main

raise SystemExit(main())
