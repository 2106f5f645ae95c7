from ssaseg.cli import main

raise SystemExit(main())
