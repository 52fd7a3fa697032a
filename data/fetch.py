"""Get the dataset (synthetic by default); `python data/fetch.py --help` for the options."""

from lhccnn.fetch import main

raise SystemExit(main())
