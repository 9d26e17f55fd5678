"""The demo behind `make demo` (`python -m bo_queue.demo`): a local Redis and workers, a
tour of tasks and one study. A dev tool, not part of the product's API."""
