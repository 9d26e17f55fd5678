"""bo_queue's HTTP API (FastAPI): `bo-queue api`, or `bo_queue.api.app:create_app`."""
