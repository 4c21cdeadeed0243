import sys

from scripts.client.cli import main

sys.exit(main())
