"""celery beat for bo_queue: static schedules from settings, dynamic schedules in Redis
(celery-redbeat) and the maintenance jobs. Arrives with the schedules issue."""
