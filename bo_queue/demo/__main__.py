"""`python -m bo_queue.demo`: run the tour (bo_queue.demo.tour)."""

from bo_queue.demo.tour import main

raise SystemExit(main())
