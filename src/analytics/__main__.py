from analytics.entrypoints.cli import main

raise SystemExit(main())
