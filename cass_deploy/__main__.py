from cass_deploy.cli import main

raise SystemExit(main())
