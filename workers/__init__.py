"""bo_queue workers: the Celery app they run, the task runner, and built-in handlers."""
