from chsnn.cli import main

raise SystemExit(main())
