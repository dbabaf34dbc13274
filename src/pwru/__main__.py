from pwru.cli import main

raise SystemExit(main())
