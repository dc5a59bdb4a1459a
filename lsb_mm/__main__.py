from lsb_mm.cli import main

raise SystemExit(main())
