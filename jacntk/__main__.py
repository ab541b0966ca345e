import sys

from jacntk.cli.main import main

sys.exit(main())
