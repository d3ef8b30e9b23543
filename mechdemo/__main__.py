from mechdemo.cli import main

raise SystemExit(main())
