from tokenfuse.cli import main

raise SystemExit(main())
