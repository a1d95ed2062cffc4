# hqm: one image for the proxy sidecar and the workers.
#   docker build -t openhqm .
#   docker run --rm openhqm proxy --listen :8000 --upstream app:8080 --redis redis://redis:6379/0
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY hqm ./hqm
RUN pip install --no-cache-dir . && rm -rf /src
RUN useradd --system --uid 10001 hqm
USER 10001
EXPOSE 8000 9090
ENTRYPOINT ["hqm"]
CMD ["--help"]
