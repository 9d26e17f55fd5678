"""The kernel: key names, Redis clients, the Celery app, task records, held sends, the
outbox, results, admission, placement and the transport. Services (studies, workflows,
schedules, agents, monitor) stand on it; nothing here imports them or the facade."""
