from tirgrpo.cli import main

raise SystemExit(main())
