FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY bo_queue ./bo_queue
COPY workers ./workers
COPY scheduler ./scheduler
# the `bo` extra: Ax, for the workers that serve the `bo` queue (study steps)
RUN pip install --no-cache-dir -c constraints.txt ".[bo]"
USER nobody
