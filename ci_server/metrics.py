"""What a process counts for Prometheus: the one module that knows prometheus_client.

The parts tell a `Metrics` what happened (a job claimed or ended, an environment built or
reused, a warm container taken, an event published, an HTTP answer); `exposition` writes
the Prometheus text format, for `GET /metrics` (api/metrics.py) and for `ci-worker
--metrics-port` (`serve`).

Counters and histograms are the process's own, counted where the thing happens: the worker
that ran a job counts its end, its duration, its builds and its warm containers; the API
process that cancelled a queued job counts that end. Prometheus scrapes every process and
sums (`sum by (status) (rate(ci_jobs_total[5m]))`); a restarted process starts again from
zero, as rate() and increase() expect. Counting them in the store instead would not be a
counter: retention deletes old jobs. The queue's gauges are different: read from the store
at each scrape (`store_counts`), every API replica gives the same numbers (take max(), not
sum()), and a worker gives none.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from ci_server.models import EventType, Job, JobStatus

CONTENT_TYPE = CONTENT_TYPE_LATEST
JOB_SECONDS_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
QUEUE_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
"""The method label's values; any other method is counted as OTHER_METHOD (uvicorn accepts
any token as a method, before any key is checked: a label per made-up one was unbounded)."""
OTHER_METHOD = "other"
UNMATCHED_ROUTE = "unmatched"
"""The route label of a request no route took (a 404; an answer of a middleware before
routing, but an upload's): raw paths would make the label's values unbounded."""


class Metrics:
    def __init__(self) -> None:
        # A registry of its own, not prometheus_client's global one: tests make many apps
        # in one process, and each must count alone.
        self.registry = CollectorRegistry(auto_describe=True)
        self._jobs = Counter(
            "ci_jobs",
            "Jobs ended, by final status, in this process",
            ["status"],
            registry=self.registry,
        )
        self._job_seconds = Histogram(
            "ci_job_duration_seconds",
            "From a job's start (its claim) to its end, of the jobs that started",
            buckets=JOB_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self._queue_seconds = Histogram(
            "ci_job_queue_seconds",
            "From a job's submission to its claim by this process's worker",
            buckets=QUEUE_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self._builds = Counter(
            "ci_environment_builds",
            "Images built by this process's worker (system packages, dependencies, a "
            "project's build), by result",
            ["result"],
            registry=self.registry,
        )
        self._cache_hits = Counter(
            "ci_environment_cache_hits",
            "Kept images reused instead of built",
            registry=self.registry,
        )
        self._warm_hits = Counter(
            "ci_warm_container_hits",
            "Jobs that ran in a container started ahead",
            registry=self.registry,
        )
        events = Counter(
            "ci_events",
            "Job events published by this process, by type",
            ["type"],
            registry=self.registry,
        )
        self._http = Counter(
            "ci_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        # Every series that may appear exists from the start, at 0, so that rate() sees its
        # first increase; and the children are looked up once, not per event.
        for status in JobStatus:
            if status.is_terminal:
                self._jobs.labels(status.value)
        for result in ("succeeded", "failed"):
            self._builds.labels(result)
        self._events = {kind: events.labels(kind.value) for kind in EventType}

    # -- what the parts tell it ----------------------------------------------------------

    def job_started(self, job: Job) -> None:
        """This process's worker claimed `job` (running, with its start time)."""
        if job.started_at is not None:
            waited = (job.started_at - job.created_at).total_seconds()
            self._queue_seconds.observe(max(0.0, waited))

    def job_ended(self, job: Job) -> None:
        """This process ended `job` (terminal, as stored)."""
        self._jobs.labels(job.status.value).inc()
        if job.started_at is not None and job.finished_at is not None:
            ran = (job.finished_at - job.started_at).total_seconds()
            self._job_seconds.observe(max(0.0, ran))

    def environment_built(self, *, succeeded: bool) -> None:
        self._builds.labels("succeeded" if succeeded else "failed").inc()

    def environment_reused(self) -> None:
        self._cache_hits.inc()

    def warm_container_taken(self) -> None:
        self._warm_hits.inc()

    def event_published(self, kind: EventType) -> None:
        self._events[kind].inc()

    def http_answered(self, method: str, route: str, status: int) -> None:
        method = method if method in HTTP_METHODS else OTHER_METHOD
        self._http.labels(method, route, str(status)).inc()

    # -- what Prometheus reads -------------------------------------------------------------

    def exposition(self, store_counts: Mapping[JobStatus, int] | None = None) -> bytes:
        """This process's metrics in the text format; with `store_counts` (the jobs
        queued and running, read from the store just now), the queue's gauges too."""
        text = generate_latest(self.registry)
        if store_counts is not None:
            text += generate_latest(_StoreGauges(store_counts))
        return text

    def serve(self, host: str, port: int) -> MetricsServer:
        """Serve `exposition` (without the store's gauges) over HTTP on `host:port`, in a
        thread of its own (ci-worker, which has no API)."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsServer(server, thread)


class MetricsServer:
    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return self.server.server_port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class _StoreGauges(Collector):
    """The queue as the store counted it for this scrape."""

    def __init__(self, counts: Mapping[JobStatus, int]) -> None:
        self.counts = counts

    def collect(self) -> Iterable[Metric]:
        for status, name, what in (
            (JobStatus.QUEUED, "ci_jobs_queued", "Jobs waiting for a worker, in the store"),
            (JobStatus.RUNNING, "ci_jobs_running", "Jobs running, on any worker, in the store"),
        ):
            yield GaugeMetricFamily(name, what, value=self.counts.get(status, 0))
