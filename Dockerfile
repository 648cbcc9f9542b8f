# edgecache: a caching edge for video and large files.
#   docker build -t edgecache .
#   docker run -p 8080:8080 -v /path/to/videos:/srv/origin -v edgecache-cache:/var/cache/edgecache edgecache
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install . && useradd --system --uid 10001 --home-dir /nonexistent edgecache \
    && mkdir -p /srv/origin /var/cache/edgecache \
    && chown edgecache:edgecache /srv/origin /var/cache/edgecache
COPY --chown=edgecache:edgecache assets /srv/origin

ENV EDGECACHE_ORIGIN=/srv/origin \
    EDGECACHE_CACHE_DIR=/var/cache/edgecache \
    EDGECACHE_HOST=0.0.0.0 \
    EDGECACHE_PORT=8080
VOLUME ["/srv/origin", "/var/cache/edgecache"]
EXPOSE 8080
USER edgecache

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/_edge/health' % os.environ.get('EDGECACHE_PORT', '8080'), timeout=2)"

ENTRYPOINT ["edgecache"]
CMD ["serve"]
